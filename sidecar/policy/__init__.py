"""Policy engines, bundles and the `sidecar policy` tooling."""
