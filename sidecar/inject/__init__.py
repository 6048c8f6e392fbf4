"""`sidecar inject-webhook`: the Kubernetes mutating admission webhook that injects the sidecar and OPA.

The Helm chart (charts/openai-policy-sidecar) renders what to inject (the native-sidecar containers, their
volumes, the agent environment, labels and annotations) into an injection config file, from the same named
templates a user's own chart can call. The webhook reads that file (`config.py`), computes a JSONPatch for
each pod it is sent (`patch.py`), and serves AdmissionReview over TLS (`server.py`).
"""
