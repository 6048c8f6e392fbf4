"""Writes tests/data/pii_corpus.jsonl: hand-written sentences with exact entity offsets.

Run: .venv/bin/python tests/data/make_pii_corpus.py

Sentences are written with inline marks `⟦ENTITY|value⟧`; offsets are computed from the marks, so
they are exact. Card numbers and IBANs are generated with valid checksums, and every phone number
is checked with libphonenumber, so the positives are realistic values a detector should find.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import phonenumbers

OUT = Path(__file__).with_name("pii_corpus.jsonl")
HOLDOUT_OUT = Path(__file__).with_name("pii_holdout.jsonl")
MARK = re.compile(r"⟦([A-Z_]+)\|(.+?)⟧")
_rng = random.Random(20240315)


def luhn(prefix: str, length: int, groups: tuple[int, ...] = (4, 4, 4, 4), sep: str = " ") -> str:
    body = prefix + "".join(str(_rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # doubled positions, counted from the check digit's left neighbour
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    digits = body + str((10 - total % 10) % 10)
    parts, pos = [], 0
    for g in groups:
        parts.append(digits[pos : pos + g])
        pos += g
    assert pos == length, (prefix, length, groups)
    return sep.join(parts)


def iban(country: str, bban: str, grouped: bool = True) -> str:
    rearranged = bban + country + "00"
    number = int("".join(str(int(c, 36)) for c in rearranged))
    code = f"{country}{98 - number % 97:02d}{bban}"
    return " ".join(code[i : i + 4] for i in range(0, len(code), 4)) if grouped else code


def phone(number: str, region: str = "US") -> str:
    assert phonenumbers.is_valid_number(phonenumbers.parse(number, region)), number
    return number


VISA = luhn("4", 16)
VISA_DASH = luhn("4", 16, sep="-")
VISA_PLAIN = luhn("4", 16, groups=(16,), sep="")
MC = luhn("54", 16)
MC2 = luhn("2221", 16)
MC2_PLAIN = luhn("2720", 16, groups=(16,), sep="")
AMEX = luhn("37", 15, groups=(4, 6, 5))
AMEX2 = luhn("34", 15, groups=(4, 6, 5))
DISCOVER = luhn("6011", 16, sep="-")
JCB = luhn("3530", 16)
DINERS = luhn("36", 14, groups=(4, 6, 4))

IBAN_DE = iban("DE", "370400440532013000")
IBAN_GB = iban("GB", "NWBK60161331926819")
IBAN_FR = iban("FR", "20041010050500013M02606")
IBAN_ES = iban("ES", "21000418450200051332", grouped=False)
IBAN_NL = iban("NL", "ABNA0417164300")
IBAN_IT = iban("IT", "X0542811101000000123456")
IBAN_CH = iban("CH", "00762011623852957", grouped=False)
IBAN_BE = iban("BE", "539007547034")
IBAN_PL = iban("PL", "109010140000071219812874")
IBAN_AT = iban("AT", "1904300234573201", grouped=False)

SENTENCES: list[str] = [
    # --- emails
    "Please send the signed contract to ⟦EMAIL_ADDRESS|legal@northwind-traders.com⟧ by Friday.",
    "Ping ⟦EMAIL_ADDRESS|ops+alerts@mail.example.co.uk⟧ if the nightly job fails again.",
    "Her work address is ⟦EMAIL_ADDRESS|k.yamamoto@tokyo-labs.jp⟧ and she answers within a day.",
    "CONTACT: ⟦EMAIL_ADDRESS|SUPPORT@ACME-CLOUD.IO⟧",
    "Forward the logs to ⟦EMAIL_ADDRESS|first.last_99@sub.domain.org⟧, not to the public list.",
    '{"user": {"email": "⟦EMAIL_ADDRESS|dev.null@example.net⟧", "role": "admin"}}',
    # --- phones, US and international
    "You can reach me on ⟦PHONE_NUMBER|" + phone("(212) 867-5309") + "⟧ after 6pm.",
    "Call the front desk at ⟦PHONE_NUMBER|" + phone("212.867.5309") + "⟧ to reschedule.",
    "My mobile is ⟦PHONE_NUMBER|" + phone("+1 646 555 0143") + "⟧.",
    "The ⟦LOCATION|London⟧ office number is ⟦PHONE_NUMBER|" + phone("+44 20 7946 0958") + "⟧.",
    "Ruf mich an: ⟦PHONE_NUMBER|" + phone("+49 30 12345678") + "⟧ (⟦LOCATION|Berlin⟧ office).",
    "For the ⟦LOCATION|Paris⟧ team dial ⟦PHONE_NUMBER|" + phone("+33 1 42 68 53 00") + "⟧.",
    "WhatsApp: ⟦PHONE_NUMBER|" + phone("+91 98765 43210") + "⟧",
    "The ⟦LOCATION|Sydney⟧ helpdesk answers on ⟦PHONE_NUMBER|"
    + phone("+61 2 9374 4000")
    + "⟧ during business hours.",
    "Text ⟦PHONE_NUMBER|" + phone("+81 3-1234-5678") + "⟧ when you land.",
    "Our ⟦LOCATION|São Paulo⟧ contact uses ⟦PHONE_NUMBER|"
    + phone("+55 11 91234-5678")
    + "⟧ for urgent issues.",
    "Reach me on ⟦PHONE_NUMBER|" + phone("020 7946 0958", "GB") + "⟧ anytime.",
    "Toll-free support: ⟦PHONE_NUMBER|" + phone("1-800-275-2273") + "⟧.",
    "fax ⟦PHONE_NUMBER|" + phone("(617) 253-1000") + "⟧, attention billing",
    "He left a voicemail from ⟦PHONE_NUMBER|" + phone("303-555-0187") + "⟧ this morning.",
    "Numbers on file: ⟦PHONE_NUMBER|"
    + phone("+34 612 34 56 78")
    + "⟧ and ⟦PHONE_NUMBER|"
    + phone("+39 06 6988 1234")
    + "⟧.",
    # --- credit cards, several brands and formats
    "Charge it to my Visa ⟦CREDIT_CARD|" + VISA + "⟧, expiry 04/27.",
    "card number: ⟦CREDIT_CARD|" + VISA_DASH + "⟧",
    "The customer paid with ⟦CREDIT_CARD|" + VISA_PLAIN + "⟧ yesterday.",
    "Use the corporate Mastercard ⟦CREDIT_CARD|" + MC + "⟧ for travel.",
    "New card ⟦CREDIT_CARD|" + MC2 + "⟧ replaces the old one.",
    "refund to ⟦CREDIT_CARD|" + MC2_PLAIN + "⟧ please",
    "Amex ⟦CREDIT_CARD|" + AMEX + "⟧ was declined twice.",
    "Please update the billing card to ⟦CREDIT_CARD|" + AMEX2 + "⟧.",
    "Discover card ⟦CREDIT_CARD|" + DISCOVER + "⟧ is on the account.",
    "I booked the hotel with JCB ⟦CREDIT_CARD|" + JCB + "⟧.",
    "Diners Club ⟦CREDIT_CARD|" + DINERS + "⟧ belongs to the finance team.",
    # --- IBAN
    "Wire the deposit to ⟦IBAN_CODE|" + IBAN_DE + "⟧.",
    "Our ⟦LOCATION|UK⟧ account is ⟦IBAN_CODE|" + IBAN_GB + "⟧ at the ⟦LOCATION|Shoreditch⟧ branch.",
    "IBAN: ⟦IBAN_CODE|" + IBAN_FR + "⟧",
    "Transfer 1,200 EUR to ⟦IBAN_CODE|" + IBAN_ES + "⟧ before the 5th.",
    "The supplier changed their bank details to ⟦IBAN_CODE|" + IBAN_NL + "⟧.",
    "Payments go to ⟦IBAN_CODE|" + IBAN_IT + "⟧ from now on.",
    "Belgian IBAN ⟦IBAN_CODE|" + IBAN_BE + "⟧ is on the invoice footer.",
    "Zapłać na konto ⟦IBAN_CODE|" + IBAN_PL + "⟧ do piątku.",
    "Refunds are paid to ⟦IBAN_CODE|" + IBAN_AT + "⟧ within ten days.",
    "Swiss account ⟦IBAN_CODE|" + IBAN_CH + "⟧ for the ⟦LOCATION|Zurich⟧ office rent.",
    # --- US SSN
    "My social security number is ⟦US_SSN|219-09-9998⟧.",
    "SSN: ⟦US_SSN|536-22-1458⟧",
    "The applicant listed ⟦US_SSN|401 73 2265⟧ as her SSN on the form.",
    "Employee SSN ⟦US_SSN|672-41-0934⟧ needs to be corrected in payroll.",
    "ssn ⟦US_SSN|291847563⟧ was entered without dashes",
    "Please verify SSN ⟦US_SSN|457-55-5462⟧ against the W-2 before filing.",
    "Her social security number, ⟦US_SSN|514-28-3390⟧, was exposed in the breach.",
    "The SSN on the claim (⟦US_SSN|385 19 7712⟧) does not match our records.",
    "Applicant: ⟦PERSON|John Rivera⟧, ⟦US_SSN|612-30-4471⟧, date of birth 03/04/1985.",
    # --- IP addresses
    "The database listens on ⟦IP_ADDRESS|10.24.8.17⟧ port 5432.",
    "Block traffic from ⟦IP_ADDRESS|203.0.113.45⟧ at the firewall.",
    "SSH into ⟦IP_ADDRESS|192.168.1.20⟧ and restart nginx.",
    "The subnet ⟦IP_ADDRESS|172.16.0.0/16⟧ is reserved for staging.",
    "Her laptop had the address ⟦IP_ADDRESS|2001:db8:85a3::8a2e:370:7334⟧ at the time.",
    "Login from IP ⟦IP_ADDRESS|198.51.100.7⟧ was flagged as suspicious.",
    "Resolve api.internal to ⟦IP_ADDRESS|fe80::1ff:fe23:4567:890a⟧ in /etc/hosts.",
    "The health check pings ⟦IP_ADDRESS|8.8.8.8⟧ every minute.",
    "Allow ⟦IP_ADDRESS|100.64.12.9⟧ through the VPN gateway.",
    "Client ⟦IP_ADDRESS|2607:f8b0:4005:80a::200e⟧ connected over IPv6.",
    '⟦IP_ADDRESS|91.198.174.192⟧ - - [15/Mar/2024:10:22:33 +0000] "GET /index.html HTTP/1.1" 200 512',
    # --- people
    "⟦PERSON|Priya Raman⟧ will lead the migration next quarter.",
    "I spoke with ⟦PERSON|José Álvarez⟧ about the delayed shipment.",
    "Dr. ⟦PERSON|Amara Okafor⟧ reviewed the lab results on Monday.",
    "Please schedule a call with Mr. ⟦PERSON|Liam O'Connor⟧ and his assistant.",
    "The report was written by ⟦PERSON|Zhang Wei⟧ and ⟦PERSON|Yuki Tanaka⟧.",
    "⟦PERSON|Olga Petrova⟧ signed off on the budget.",
    "Ask ⟦PERSON|Ahmed Hassan⟧ whether the visa paperwork arrived.",
    "Prof. ⟦PERSON|Henrik Larsen⟧ teaches the distributed systems course.",
    "Thanks, ⟦PERSON|Sofia Rossi⟧ — I'll send the draft tomorrow.",
    "Our new hire ⟦PERSON|Kwame Mensah⟧ starts on the platform team.",
    "Ms. ⟦PERSON|Grace Kim⟧ asked for a copy of the invoice.",
    "The ticket was reassigned from ⟦PERSON|Pierre Dubois⟧ to ⟦PERSON|Hannah Schmidt⟧.",
    "⟦PERSON|Fatima Al-Sayed⟧ is the account owner.",
    "Can ⟦PERSON|Dmitri Volkov⟧ approve the access request?",
    "The patient, ⟦PERSON|Eleanor Whitfield⟧, was discharged on Tuesday.",
    "Meeting notes: ⟦PERSON|Rahul Mehta⟧ presented the roadmap and ⟦PERSON|Chiara Bianchi⟧ took questions.",
    "⟦PERSON|Nguyen Van Minh⟧ requested a refund for order 7781.",
    "According to ⟦PERSON|Ingrid Bergström⟧, the contract renews automatically.",
    "Send the gift to ⟦PERSON|Tomás Novák⟧ at the office.",
    "I'm ⟦PERSON|Michael Brown⟧, and I'd like to close my account.",
    "Best regards,\n⟦PERSON|Olivia Martin⟧\nHead of Sales",
    "Cheers, ⟦PERSON|Alex⟧",
    "⟦PERSON|Jean-Luc Moreau⟧ owns the pricing service.",
    "Ms. ⟦PERSON|Siobhán Byrne⟧ from the ⟦LOCATION|Dublin⟧ office joined late.",
    "The assignee is ⟦PERSON|Wojciech Kowalczyk⟧ until the end of the sprint.",
    "can you ask ⟦PERSON|david lee⟧ to check the numbers?",
    # --- locations and addresses
    "The conference moved from ⟦LOCATION|Berlin⟧ to ⟦LOCATION|Lisbon⟧ this year.",
    "She lives at ⟦LOCATION|742 Evergreen Terrace⟧, ⟦LOCATION|Springfield⟧.",
    "Ship the replacement to ⟦LOCATION|350 Fifth Avenue⟧, ⟦LOCATION|New York⟧.",
    "Deliver to ⟦LOCATION|Hauptstraße 12⟧, 10115 ⟦LOCATION|Berlin⟧.",
    "Our warehouse is in ⟦LOCATION|Lagos⟧, close to the port.",
    "He grew up in ⟦LOCATION|Kyoto⟧ and moved to ⟦LOCATION|Toronto⟧ in 2015.",
    "The parcel is waiting at ⟦LOCATION|221B Baker Street⟧, ⟦LOCATION|London⟧.",
    "Flights to ⟦LOCATION|Nairobi⟧ were cancelled because of the storm.",
    # --- mixed
    "Hi, I'm ⟦PERSON|Sarah Johnson⟧ from ⟦LOCATION|Chicago⟧; email me at ⟦EMAIL_ADDRESS|sarah.j@brightpath.com⟧ "
    "or call ⟦PHONE_NUMBER|" + phone("(312) 555-0199") + "⟧.",
    "⟦PERSON|Lars Johansson⟧ (⟦EMAIL_ADDRESS|lars.johansson@nordicfin.se⟧) paid with ⟦CREDIT_CARD|"
    + MC
    + "⟧.",
    "Customer ⟦PERSON|Aisha Bello⟧, SSN ⟦US_SSN|310-55-7821⟧, IBAN ⟦IBAN_CODE|" + IBAN_GB + "⟧.",
    "Alert: login for ⟦EMAIL_ADDRESS|m.chen@example.com⟧ from ⟦IP_ADDRESS|185.199.108.153⟧ in ⟦LOCATION|Singapore⟧.",
    "Forward ⟦PERSON|Keiko Sato⟧'s resume to ⟦EMAIL_ADDRESS|hr@fabrikam.com⟧ and cc ⟦PERSON|Emily Clarke⟧.",
    "Ticket #4821: ⟦PERSON|Rafael Moreno⟧ cannot log in; his number is ⟦PHONE_NUMBER|"
    + phone("+52 55 1234 5678")
    + "⟧.",
    "Refund the Visa ⟦CREDIT_CARD|" + VISA + "⟧ and notify ⟦EMAIL_ADDRESS|billing@contoso.com⟧.",
    'tool_output: {"name": "⟦PERSON|Maria Garcia⟧", "phone": "⟦PHONE_NUMBER|'
    + phone("+34 612 34 56 78")
    + '⟧", "city": "⟦LOCATION|Madrid⟧"}',
    "The server at ⟦IP_ADDRESS|10.0.3.12⟧ emailed ⟦EMAIL_ADDRESS|oncall@example.org⟧ at 03:14 UTC.",
    "Signed, Dr. ⟦PERSON|Samuel Adeyemi⟧, ⟦LOCATION|Abuja⟧, ⟦PHONE_NUMBER|"
    + phone("+234 803 123 4567")
    + "⟧",
    # --- tricky negatives: no entities at all
    "Your order number 555-201-3344 has shipped.",
    "Invoice 4000-1234-5678 is overdue by 30 days.",
    "Tracking number 1Z999AA10123456784 shows the parcel in transit.",
    "Please upgrade to version 10.2.3.4 before the maintenance window.",
    "Library version 1.10.100.2 broke the build.",
    "We released v1.2.3 and v2.0.0-rc.1 today.",
    "Python 3.11.7 and Node 20.11.1 are installed on the runner.",
    "The workload runs on EKS with data in S3, batch jobs on EC2, and IAM roles per team.",
    "Lambda functions in us-east-1 write to DynamoDB and CloudWatch.",
    "Mastercard and Visa both accept the new tokenization API.",
    "Ticket INC-4432-1190 was escalated to the on-call engineer.",
    "Build 2024.03.15.1 finished at 2024-03-15T10:22:33Z.",
    "The commit hash is 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b.",
    "Request id 123e4567-e89b-12d3-a456-426614174000 failed with status 503.",
    "The plan costs $1,299.00 per month, or 14,990 EUR per year.",
    "Run `kubectl scale deployment web --replicas=3` and watch the pods.",
    "for i in range(10):\n    total += prices[i] * 1.08",
    "Set timeout_ms = 30000 and max_retries = 5 in config.yaml.",
    "The model gpt-4o-mini-2024-07-18 answered in 1.2 seconds.",
    "Ports 8080 and 8443 are open on the load balancer.",
    "The SHA-256 checksum e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 matches.",
    "Error code 0x80070005 means access denied.",
    "The ISBN 978-3-16-148410-0 is printed on the back cover.",
    "Our SLA is 99.95% uptime across 3 regions.",
    "Use the role arn:aws:iam::123456789012:role/deploy for deployments.",
    "The image nginx:1.25.3-alpine has digest sha256:4d8a1f0c3e2b.",
    "Amazon order 112-7865431-9923018 arrives on Thursday.",
    "Kubernetes 1.29 deprecates the flowcontrol v1beta2 API.",
    "See table 3.2.1.4 in section 4.1 of the spec.",
    "My phone has 12 GB of RAM and 256 GB of storage.",
    "Terraform plan: 3 to add, 1 to change, 0 to destroy.",
    "The batch contained 1,048,576 rows and took 00:14:32 to load.",
    "Apply patch 5.15.0-1042 to the kernel tonight.",
    "SELECT id, total FROM orders WHERE total > 250.00 ORDER BY id;",
    "Grafana shows p99 latency of 230 ms for the checkout service.",
    "Case 2024-0098-117 was closed as a duplicate.",
    "Deploy the app on Vercel and the database on Supabase.",
    "Heroku dynos restart every 24 hours.",
    "Pulumi stacks are stored in the backend bucket.",
    "Call the API with page=2 and limit=50.",
    "The phone field must match ^\\+?[0-9]{7,15}$ in the schema.",
    "Revenue grew 12.5% to $4.2M in Q3 2024.",
    "Press Ctrl+Shift+P and type Reload Window.",
    "The test suite has 1,204 tests; 3 failed and 12 were skipped.",
    "Serial number SN-8842-1190-77 is printed under the device.",
    "Set the MTU to 9001 on the network interface.",
    "Order #100-4455-6677 was refunded on Monday.",
]

# A held-out set, not used for tuning: reported, not gated. The first part was written after the
# corpus and looked at once (it led to the greeting/sign-off name cues); the second part was written
# after all tuning. Labels say what should be masked, whether or not the default engine can find it
# (e.g. a fictional 555 number, a Mexican national number with MX not among the phone regions).
HOLDOUT: list[str] = [
    "Please contact ⟦PERSON|Benjamin Okoro⟧ at ⟦EMAIL_ADDRESS|benjamin.okoro@lumen-health.org⟧ regarding the audit.",
    "⟦PERSON|Isabella Fernández⟧ called from ⟦PHONE_NUMBER|"
    + phone("+34 91 123 45 67")
    + "⟧ about the refund.",
    "The VM at ⟦IP_ADDRESS|172.31.44.9⟧ runs Ubuntu 22.04 with kernel 5.15.0.91.",
    "Send $250 to account ⟦IBAN_CODE|GB33 BUKB 2020 1555 5555 55⟧ (that is a test IBAN).",
    "Customer reported card ⟦CREDIT_CARD|4012 8888 8888 1881⟧ stolen on Sunday.",
    "Release 4.2.0.1 fixes the login bug reported by ⟦PERSON|Hiroshi Yamada⟧.",
    "Our ⟦LOCATION|Denver⟧ office phone: ⟦PHONE_NUMBER|" + phone("(303) 499-7111") + "⟧.",
    "The backup job 20240315-0230 copied 1.2 TB to s3://backups/db.",
    "Tell ⟦PERSON|Aroha Ngata⟧ that her SSN ⟦US_SSN|287-65-4321⟧ was verified.",
    "Commit a1b2c3d by ⟦PERSON|Wei Zhang⟧ bumped numpy to 1.26.4.",
    "Standup: ⟦PERSON|Lucía⟧, ⟦PERSON|Marek⟧ and ⟦PERSON|Obi⟧ discussed the outage in ⟦LOCATION|Frankfurt⟧.",
    "Escalate INC0012345 to the network team; the VIP is ⟦IP_ADDRESS|10.200.0.50⟧.",
    'The spreadsheet lists ⟦PHONE_NUMBER|555-867-5309⟧ under "do not call" for ⟦PERSON|Dana Whitaker⟧.',
    "Kubernetes node ip-10-0-1-23.ec2.internal went NotReady.",
    "Cheers,\n⟦PERSON|Nadia⟧",
    "⟦PERSON|Amit Patel⟧ lives at ⟦LOCATION|18 Willow Lane⟧, ⟦LOCATION|Cambridge⟧.",
    "Our cert expires on 2025-01-31; renew via ACM in eu-central-1.",
    "⟦PERSON|Henry⟧'s email is ⟦EMAIL_ADDRESS|henry@ex-ample.co⟧ and his cell is ⟦PHONE_NUMBER|"
    + phone("+1-415-555-2671")
    + "⟧.",
    "Payment ref 4485 2210 9932 was declined.",
    "The Docker image digest is sha256:9b2f0c1d; version 2.14.3.0 is pinned.",
    "Mr. ⟦PERSON|Thandiwe Dlamini⟧ (⟦LOCATION|Johannesburg⟧) requested account deletion.",
    "Error at line 1042, column 17 in handler.py.",
    "Forward to ⟦PERSON|Carlos⟧ at ⟦EMAIL_ADDRESS|carlos.m@tienda.mx⟧ or call ⟦PHONE_NUMBER|"
    + phone("55 5123 4567", "MX")
    + "⟧.",
    "The EU region uses 3 AZs and the SLA is 99.9%.",
    "Greetings from ⟦LOCATION|Oslo⟧ — ⟦PERSON|Sigrid Haugen⟧.",
    # written after tuning
    "⟦PERSON|Greta Lindqvist⟧ asked whether the invoice can be sent to ⟦EMAIL_ADDRESS|greta@lindqvist-design.se⟧.",
    "Our on-call engineer today is ⟦PERSON|Kofi Boateng⟧; page him at ⟦PHONE_NUMBER|"
    + phone("+233 24 123 4567")
    + "⟧.",
    "Please do not share ⟦US_SSN|432-10-9876⟧ in the chat.",
    "The VPN assigned ⟦IP_ADDRESS|10.8.0.14⟧ to ⟦PERSON|Maya Goldberg⟧'s laptop.",
    "Card ending 4242 is fine, but the full number ⟦CREDIT_CARD|" + luhn("4", 16) + "⟧ must never be logged.",
    "Wire transfers go to ⟦IBAN_CODE|" + iban("FR", "30006000011234567890189") + "⟧ at Société Générale.",
    "I live in ⟦LOCATION|Porto⟧ but work remotely for a company in ⟦LOCATION|Austin⟧.",
    "Running `docker run -p 8080:80 nginx:1.25` fails on the M2 Mac.",
    "The p50 was 12.3 ms and the p99 was 87.6 ms over 10,000 requests.",
    "Version 3.4.5.6 of the agent drops support for Python 3.8.",
    "Hi ⟦PERSON|Tariq⟧, your appointment with Dr. ⟦PERSON|Helen Park⟧ is confirmed for 3pm.",
    "The warehouse at ⟦LOCATION|4100 Industrial Parkway⟧ in ⟦LOCATION|Cleveland⟧ ships on weekdays.",
    "Her new number is ⟦PHONE_NUMBER|" + phone("07911 123456", "GB") + "⟧ (⟦LOCATION|UK⟧ mobile).",
    "Contact ⟦EMAIL_ADDRESS|privacy@northbank.com⟧ to exercise your rights.",
    "Timestamp 1710498153 and nonce 88213377 were replayed.",
    "Send the NDA to ⟦PERSON|Olumide Ajayi⟧ and ⟦PERSON|Beatriz Santos⟧ before Monday.",
    "Customer since 2019, ⟦PERSON|Ewa Nowak⟧, ⟦LOCATION|Kraków⟧, phone ⟦PHONE_NUMBER|"
    + phone("+48 12 345 67 89")
    + "⟧.",
    "The S3 bucket arn:aws:s3:::acme-logs-2024 is encrypted with KMS.",
    "Replace ⟦IP_ADDRESS|192.0.2.1⟧ with your own address.",
    "Meeting with ⟦PERSON|Anders⟧ and ⟦PERSON|Mette⟧ from the ⟦LOCATION|Copenhagen⟧ office moved to 14:00.",
]


def parse(marked: str) -> dict[str, object]:
    text, entities, pos = [], [], 0
    length = 0
    for m in MARK.finditer(marked):
        plain = marked[pos : m.start()]
        text.append(plain)
        length += len(plain)
        value = m.group(2)
        entities.append({"entity": m.group(1), "start": length, "end": length + len(value)})
        text.append(value)
        length += len(value)
        pos = m.end()
    text.append(marked[pos:])
    joined = "".join(text)
    assert "⟦" not in joined and "⟧" not in joined, marked
    return {"text": joined, "entities": entities}


def write(path: Path, sentences: list[str]) -> None:
    rows = [parse(s) for s in sentences]
    for row in rows:
        for e in row["entities"]:  # type: ignore[attr-defined]
            value = str(row["text"])[e["start"] : e["end"]]
            assert value.strip() == value, value
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts: dict[str, int] = {}
    for row in rows:
        for e in row["entities"]:  # type: ignore[attr-defined]
            counts[e["entity"]] = counts.get(e["entity"], 0) + 1
    negatives = sum(1 for r in rows if not r["entities"])
    print(f"{len(rows)} sentences ({negatives} without entities) -> {path}")
    print(", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


def main() -> None:
    write(OUT, SENTENCES)
    write(HOLDOUT_OUT, HOLDOUT)


if __name__ == "__main__":
    main()
