"""Write the seed corpus (fuzz/corpus/<kind>/<name>): real header shapes and documents.

Each seed starts with the byte that picks its parser in fuzz_parsers.py. fuzz/corpus/found/ holds
inputs that a longer fuzzing run added coverage with (libFuzzer ``-merge=1``), kept as seeds too.
Certificates are public (minted by sidecar.dev.pki; no key is written). Run again only to refresh
the seeds:

    python fuzz/make_corpus.py
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hostile.material import certificates, header_values  # noqa: E402

CORPUS = ROOT / "fuzz" / "corpus"
LETTERS = {"auto": "u", "escaped_pem": "e", "alb": "l", "pem": "p", "der_base64": "d", "traefik": "t",
           "rfc9440": "r", "xfcc": "x"}


def seeds() -> dict[str, dict[str, bytes]]:
    vector, leaf, ca = certificates()
    token = secrets.token_urlsafe(32)
    jwt_like = ".".join(base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in (b'{"alg":"ES256"}', b"{}", b"s"))
    out: dict[str, dict[str, bytes]] = {"authorization": {}, "certificate": {}, "introspection": {}, "config": {}}
    a = out["authorization"]
    for name, value in {
        "opaque": f"Bearer {token}", "lower-scheme": f"bearer {token}", "jwt": f"Bearer {jwt_like}",
        "padding": "Bearer abc+/def==", "two-fields": f"Bearer {token}\nBearer {token}", "two-values": "Bearer a b",
        "basic": "Basic c2lkZWNhcjpzZWNyZXQ=", "dpop": f"DPoP {token}", "empty": "Bearer ", "tab": "Bearer\tabc",
        "non-ascii": "Bearer t\u00f6ken", "nul": "Bearer a\x00b",
    }.items():
        a[name] = b"a" + value.encode("utf-8")
    c = out["certificate"]
    for label, cert, chain in (("vector", vector, ()), ("leaf-chain", leaf, (ca,)), ("ca", ca, ())):
        for fmt, value in header_values(cert, chain).items():
            c[f"{fmt}-{label}"] = LETTERS[fmt].encode() + value.encode()
            c[f"auto-{fmt}-{label}"] = b"u" + value.encode()
    digest = hashlib.sha256(vector.der).hexdigest()
    c["xfcc-istio-hash"] = (f"hBy=spiffe://cluster.local/ns/api/sa/api;Hash={digest};Subject=\"\";"
                            "URI=spiffe://cluster.local/ns/default/sa/client").encode()
    c["xfcc-quoted"] = b'xBy=a;Subject="CN=a\\"b, O=c; d=e";Cert="%2D"'
    c["pem-tab-prefixed"] = b"p" + vector.pem.replace("\n", "\n\t").encode()  # nginx $ssl_client_cert
    c["der-two-certs"] = b"d" + base64.b64encode(vector.der + ca.der)
    c["not-x509"] = b"d" + base64.b64encode(b"\x30\x03\x02\x01\x01")
    # Regression (found by this target): X.509 version 28 raised InvalidVersion, not a ValueError.
    v28 = vector.der.replace(bytes.fromhex("a003020102"), bytes.fromhex("a00302011c"), 1)
    c["regression-x509-version-28"] = b"d" + base64.b64encode(v28)
    i = out["introspection"]
    full = {"active": True, "scope": "read write", "client_id": "alice", "username": "alice@example",
            "token_type": "Bearer", "exp": 1_900_000_000, "iat": 1_700_000_000, "nbf": 1_700_000_000, "sub": "alice",
            "aud": ["api", "billing"], "iss": "https://idp.example", "jti": "j1",
            "cnf": {"x5t#S256": vector.x5t}, "tenant": "t1", "roles": ["a", "b"]}
    for name, value in {
        "active-bound": json.dumps(full), "inactive": '{"active":false}', "unbound": '{"active":true,"sub":"c"}',
        "aud-string": '{"active":true,"aud":"api"}', "nan-exp": '{"active":true,"exp":NaN}',
        "huge-exp": '{"active":true,"exp":1' + "0" * 40 + "}", "surrogate": '{"active":true,"sub":"\\ud800"}',
        "crlf-claims": json.dumps({"active": True, "sub": "a\r\nX: y", "tenant": {"x": "\n"}}),
        "wrong-types": '{"active":"true","scope":["a"]}', "array": "[1,2]", "nested": "[" * 50 + "]" * 50,
    }.items():
        i[name] = b"j" + value.encode()
    g = out["config"]
    g["full-toml"] = b"k" + (
        b'[server]\nport = 8080\nmax_header_size = 65536\n[idp]\nissuer = "https://idp.example"\n'
        b'client_id = "sidecar"\nauth_method = "client_secret_basic"\nclient_secret = "x"\n'
        b'[cache]\nmax_ttl = 300.0\n[policy]\nbinding = "strict"\nrequired_scopes = ["read"]\nleeway = 5\n'
        b'[client_cert]\nheader = "x-forwarded-client-cert"\nformat = "xfcc"\ntrusted_proxies = ["10.0.0.0/8"]\n'
        b'[response]\nclaims = { tenant = "tenant" }\nrealm = "api"\n'
    )
    g["nan-toml"] = b"k[policy]\nleeway = nan\n[cache]\nmax_ttl = inf\n"
    g["bad-header-toml"] = b'k[response]\nclaims = { t = "a\\nb" }\nrealm = "a\\r\\nb"\n'
    g["latin1-toml"] = b"k# caf\xe9\n"
    g["env"] = (b"vSIDECAR_POLICY__REQUIRED_SCOPES=read, write\nSIDECAR_RESPONSE__CLAIMS=tenant=tenant,acr=acr\n"
                b"SIDECAR_CACHE__MAX_ENTRIES=10\nSIDECAR_CLIENT_CERT__XFCC_TRUST_HASH=true\n")
    g["env-nan"] = b"vSIDECAR_POLICY__LEEWAY=nan\nSIDECAR_SERVER__PORT=0x10\n"
    return out


def main() -> None:
    all_seeds = seeds()
    for kind, files in all_seeds.items():  # fuzz/corpus/found/ (inputs the fuzzer found) is kept
        shutil.rmtree(CORPUS / kind, ignore_errors=True)
        (CORPUS / kind).mkdir(parents=True)
        for name, data in files.items():
            (CORPUS / kind / name).write_bytes(data)
    print(f"wrote {sum(len(f) for f in all_seeds.values())} seeds under {CORPUS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
