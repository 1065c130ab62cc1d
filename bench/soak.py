"""Soak: a million decisions under a mix of tokens and IdP faults, counting wrong allows.

The sidecar runs in this process against the fake IdP (sidecar/dev/fakeidp.py) over real mutual TLS
on 127.0.0.1. Most decisions call ``Decider.decide()`` directly (in-process, for throughput: the
HTTP parsing is not what a soak measures); ``--http-every N`` sends every Nth decision through the
real HTTP check port instead. While it runs, the IdP cycles through faults (500, 503 with
Retry-After, garbage, an expired-but-active answer, slow past the timeout, dropped connections),
tokens are minted, expire and are revoked, and an oracle judges every decision:

- a wrong allow is an allow for a request that must be denied: another client's certificate, no
  or a garbage certificate, an unbound token (binding strict), a malformed or duplicated
  Authorization, an unknown token, a token past ``exp`` + leeway, or a token revoked longer ago
  than ``cache.max_ttl`` (the documented revocation delay) plus one IdP timeout;
- an error is an exception out of ``decide()``, an ``internal_error`` deny, or an HTTP 5xx other
  than a 503 ``idp_unavailable``.

RSS (of this process: the sidecar and, in-process, the fake IdP) is sampled every tenth of the
run; growth after the first fifth (when the caches are full) beyond ``--max-rss-growth`` counts as
a leak. It prints one summary line and exits 1 on any wrong allow, error or leak:

    wrong_allows=0 decisions=N errors=0 ... rss_start=...MiB rss_end=...MiB

    .venv/bin/python bench/soak.py                       # 1,000,000 decisions
    .venv/bin/python bench/soak.py --decisions 20000     # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sidecar.app import check_server  # noqa: E402
from sidecar.config import from_mapping  # noqa: E402
from sidecar.core.entry import Entry  # noqa: E402
from sidecar.core.request import CheckRequest  # noqa: E402
from sidecar.dev.devidp import server_context  # noqa: E402
from sidecar.dev.fakeidp import FakeIdp, Fault, standard_idp  # noqa: E402
from sidecar.dev.pki import CertificateAuthority, Issued  # noqa: E402
from sidecar.runtime import Sidecar  # noqa: E402

LEEWAY = 5.0
MAX_TTL = 2.0
IDP_TIMEOUT = 0.3
BATCH = 256
KINDS = {  # kind -> weight in the mix
    "valid": 40, "wrong_cert": 12, "no_cert": 4, "garbage_cert": 4, "expired": 10, "short_lived": 6,
    "revoked": 8, "unbound": 6, "unknown": 4, "garbage_auth": 6,
}
GARBAGE_AUTH = [
    [], ["Basic c2lkZWNhcjpzZWNyZXQ="], ["Bearer"], ["Bearer a b"], ["Bearer " + "x" * 20000], ["DPoP abc"],
    ["Bearer t\u00f6ken"], ["Bearer %00"], ["Bearer abc", "Bearer abc"], ["Bearer ===="], ["bearer"],
]


def _escaped(issued: Issued) -> str:
    return quote(issued.cert_pem.decode(), safe="")


@dataclass
class Token:
    value: str
    kind: str
    exp: float
    revoked_at: float | None = None


@dataclass
class Tally:
    decisions: int = 0
    wrong_allows: int = 0
    errors: int = 0
    http: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    rss_warm: float = 0.0  # RSS once a fifth of the decisions ran (caches full): the leak baseline

    @property
    def rss_growth(self) -> float:
        return self.rss[-1] - (self.rss_warm or self.rss[0])


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


class Soak:
    def __init__(self, idp: FakeIdp, sidecar: Sidecar, ca: CertificateAuthority, alice: Issued, bob: Issued,
                 rng: random.Random) -> None:
        self.idp, self.sidecar, self.rng = idp, sidecar, rng
        self.alice_x5t = alice.x5t_s256
        self.alice_cert, self.bob_cert = _escaped(alice), _escaped(bob)
        self.garbage_certs = ["%ZZ" + self.alice_cert[:200], "-----BEGIN CERTIFICATE-----AAAA-----END CERTIFICATE-----",
                              _escaped(ca.root), "By=x;Hash=" + "ab" * 32, self.alice_cert[: len(self.alice_cert) // 2]]
        self.tokens: dict[str, list[Token]] = {kind: [] for kind in KINDS}
        self.kinds = list(KINDS)
        self.weights = list(KINDS.values())
        self.tally = Tally()

    # --- the population --------------------------------------------------------------------------

    def refresh(self, now: float) -> None:
        """Mint fresh tokens, revoke some valid ones, keep each list short (a moving population)."""
        idp, t = self.idp, self.tokens
        for _ in range(4):
            t["valid"].append(Token(idp.mint("alice", cnf=self.alice_x5t, lifetime=600), "valid", now + 600))
            t["wrong_cert"].append(Token(idp.mint("alice", cnf=self.alice_x5t), "wrong_cert", now + 300))
            t["no_cert"].append(Token(idp.mint("alice", cnf=self.alice_x5t), "no_cert", now + 300))
            t["garbage_cert"].append(Token(idp.mint("alice", cnf=self.alice_x5t), "garbage_cert", now + 300))
            t["unbound"].append(Token(idp.mint("carol"), "unbound", now + 300))
            t["unknown"].append(Token(f"unknown-{self.rng.getrandbits(64):x}", "unknown", 0))
            expired = idp.mint("alice", cnf=self.alice_x5t, lifetime=1)
            idp.tokens[expired]["exp"] = int(now) - 60  # the IdP answers inactive; a lax one "active"
            t["expired"].append(Token(expired, "expired", now - 60))
            t["short_lived"].append(Token(idp.mint("alice", cnf=self.alice_x5t, lifetime=3), "short_lived",
                                          int(now) + 3))
            revoked = idp.mint("alice", cnf=self.alice_x5t, lifetime=600)
            t["revoked"].append(Token(revoked, "revoked", now + 600))
        for token in t["revoked"]:  # revoke at the IdP the ones that have been served a while
            if token.revoked_at is None and self.rng.random() < 0.3:
                self.idp.tokens.pop(token.value, None)
                token.revoked_at = now
        for kind, tokens in t.items():
            # Short-lived and revoked tokens stay long enough (~12 s) to be asked past exp + leeway
            # and past revocation + max_ttl; the rest rotate quickly (a moving population).
            del tokens[: -(200 if kind in ("short_lived", "revoked") else 40)]
        live = {token.value for tokens in t.values() for token in tokens}
        for value in [v for v in idp.tokens if v not in live]:
            del idp.tokens[value]  # the IdP forgets tokens no one presents any more (bounded memory)

    # --- one request and its oracle --------------------------------------------------------------

    def request(self) -> tuple[Token | None, str, list[str], str | None]:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind == "garbage_auth":
            return None, kind, self.rng.choice(GARBAGE_AUTH), self.alice_cert
        token = self.rng.choice(self.tokens[kind])
        cert: str | None = {"wrong_cert": self.bob_cert, "no_cert": None,
                            "garbage_cert": self.rng.choice(self.garbage_certs)}.get(kind, self.alice_cert)
        return token, kind, [f"Bearer {token.value}"], cert

    @staticmethod
    def must_deny(token: Token | None, kind: str, started: float) -> bool:
        if kind in ("wrong_cert", "no_cert", "garbage_cert", "unbound", "unknown", "garbage_auth", "expired"):
            return True
        assert token is not None
        if started > token.exp + LEEWAY + 0.05:
            return True
        return token.revoked_at is not None and started > token.revoked_at + MAX_TTL + IDP_TIMEOUT + 0.5

    def judge(self, token: Token | None, kind: str, started: float, allowed: bool, reason: str, status: int) -> None:
        tally = self.tally
        tally.decisions += 1
        tally.outcomes[f"{kind}:{'allow' if allowed else reason}"] += 1
        if allowed and self.must_deny(token, kind, started):
            tally.wrong_allows += 1
            if len(tally.wrong) < 10:
                tally.wrong.append(f"{kind} allowed at {started:.2f} (exp {token.exp if token else '-'})")
        if reason == "internal_error" or (status >= 500 and not (status == 503 and reason == "idp_unavailable")):
            tally.errors += 1


FAULTS: list[tuple[str, Fault | None]] = [
    ("none", None), ("500", Fault(status=500)), ("none", None),
    ("503", Fault(status=503, headers={"Retry-After": "1"})),
    ("none", None), ("garbage", Fault(body=b"<html>oops</html>")), ("none", None),
    ("slow", Fault(delay=IDP_TIMEOUT + 0.2)), ("none", None), ("drop", Fault(drop=True)), ("none", None),
    ("lax_expired", None),  # filled in: an IdP that says "active" for an expired, alice-bound token
    ("none", None), ("non_object", Fault(body=b"[1,2,3]")),
]


async def start_idp(pki_dir: Path) -> tuple[FakeIdp, web.AppRunner, CertificateAuthority, dict[str, Issued]]:
    ca = CertificateAuthority("soak CA")
    issued = {name: ca.issue(name, server_names=("127.0.0.1",) if name == "idp" else ())
              for name in ("idp", "sidecar", "alice", "bob")}
    (pki_dir / "ca.crt").write_bytes(ca.root.cert_pem)
    for name, item in issued.items():
        item.write(pki_dir, name)
    idp = standard_idp()
    runner = web.AppRunner(idp.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0,
                       ssl_context=server_context(pki_dir / "idp.crt", pki_dir / "idp.key", pki_dir / "ca.crt"))
    await site.start()
    port = runner.addresses[0][1]
    idp.issuer = f"https://127.0.0.1:{port}"
    return idp, runner, ca, issued


async def soak(decisions: int, *, seed: int = 1, http_every: int = 100, fault_period: float = 1.0,
               quiet: bool = False, binding: str = "strict") -> Tally:
    """Run the soak; ``binding`` other than strict exists to prove that the oracle catches allows."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="soak-pki-") as tmp:
        pki_dir = Path(tmp)
        idp, idp_runner, ca, issued = await start_idp(pki_dir)
        config = from_mapping({
            "idp": {"issuer": idp.issuer, "client_id": "sidecar", "cert_file": str(pki_dir / "sidecar.crt"),
                    "key_file": str(pki_dir / "sidecar.key"), "ca_file": str(pki_dir / "ca.crt"),
                    "timeout": IDP_TIMEOUT, "connect_timeout": IDP_TIMEOUT},
            "cache": {"max_ttl": MAX_TTL, "negative_ttl": 1.0, "max_entries": 5000},
            "policy": {"binding": binding, "leeway": LEEWAY},
            "log": {"decisions": "off"},
        })
        async with Sidecar.running(config) as sidecar:
            front = web.ServerRunner(check_server(sidecar), access_log=None)
            await front.setup()
            await web.TCPSite(front, "127.0.0.1", 0).start()
            front_url = f"http://127.0.0.1:{front.addresses[0][1]}/check"
            run = Soak(idp, sidecar, ca, issued["alice"], issued["bob"], rng)
            lax_record: dict[str, Any] = {"active": True, "client_id": "alice", "sub": "alice", "iss": idp.issuer,
                                          "cnf": {"x5t#S256": issued["alice"].x5t_s256}}
            try:
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as http:
                    await _drive(run, http, front_url, decisions, http_every, fault_period, lax_record, quiet)
            finally:
                await front.cleanup()
            await idp_runner.cleanup()
    return run.tally


async def _drive(run: Soak, http: aiohttp.ClientSession, url: str, decisions: int, http_every: int,
                 fault_period: float, lax_record: dict[str, Any], quiet: bool) -> None:
    tally, decider = run.tally, run.sidecar.decider
    began = time.monotonic()
    run.refresh(time.time())
    next_refresh = next_fault = 0.0
    phase = 0
    report_every = max(decisions // 10, BATCH)
    next_report = 0
    gc.collect()
    tally.rss.append(rss_mib())
    sent = 0
    while sent < decisions:
        wall, mono = time.time(), time.monotonic()
        if mono >= next_refresh:
            run.refresh(wall)
            next_refresh = mono + 0.25
        if mono >= next_fault:
            name, fault = FAULTS[phase % len(FAULTS)]
            if name == "lax_expired":
                fault = Fault(body=json.dumps({**lax_record, "exp": int(wall) - 600}).encode())
            run.idp.fault = fault
            phase += 1
            next_fault = mono + fault_period
        batch = [run.request() for _ in range(min(BATCH, decisions - sent))]
        results = await asyncio.gather(*(
            _via_http(http, url, auth, cert) if (sent + i) % http_every == 0 else _direct(decider, auth, cert)
            for i, (_, _, auth, cert) in enumerate(batch)
        ))
        for (token, kind, _, _), (allowed, reason, status) in zip(batch, results, strict=True):
            run.judge(token, kind, wall, allowed, reason, status)
        tally.http += sum(1 for i in range(len(batch)) if (sent + i) % http_every == 0)
        sent += len(batch)
        if sent >= next_report:
            next_report += report_every
            tally.rss.append(rss_mib())
            if not tally.rss_warm and sent >= decisions // 5:
                tally.rss_warm = tally.rss[-1]
            if not quiet:
                rate = sent / max(time.monotonic() - began, 1e-9)
                print(f"  {sent:>9} decisions  {rate:>8.0f}/s  rss={tally.rss[-1]:.1f}MiB  "
                      f"wrong_allows={tally.wrong_allows} errors={tally.errors}", file=sys.stderr, flush=True)
    run.idp.fault = None
    gc.collect()
    tally.rss.append(rss_mib())


async def _direct(decider: Any, auth: list[str], cert: str | None) -> tuple[bool, str, int]:
    try:
        decision = await decider.decide(CheckRequest(auth, [cert] if cert is not None else [], "127.0.0.1"))
    except Exception as exc:  # decide() must never raise: count it
        return False, f"exception:{type(exc).__name__}", 599
    if isinstance(decision, Entry):
        return True, "ok", 200
    return False, decision.denial.reason, decision.denial.status


async def _via_http(http: aiohttp.ClientSession, url: str, auth: list[str], cert: str | None) -> tuple[bool, str, int]:
    headers = [("Authorization", a) for a in auth] + ([("x-client-cert", cert)] if cert is not None else [])
    try:
        async with http.get(url, headers=headers) as response:
            body = await response.read()
            if response.status == 200:
                return True, "ok", 200
            try:
                reason = str(json.loads(body).get("reason"))
            except ValueError:
                reason = f"http_{response.status}"
            return False, reason, response.status
    except (aiohttp.ClientError, ValueError) as exc:
        return False, f"client:{type(exc).__name__}", 598


def summary(tally: Tally, seconds: float) -> str:
    idp_denials = sum(n for key, n in tally.outcomes.items() if key.endswith(":idp_unavailable"))
    valid_allowed = tally.outcomes.get("valid:allow", 0)
    return (f"wrong_allows={tally.wrong_allows} decisions={tally.decisions} errors={tally.errors} "
            f"http={tally.http} valid_allowed={valid_allowed} idp_unavailable={idp_denials} "
            f"rss_start={tally.rss[0]:.1f}MiB rss_end={tally.rss[-1]:.1f}MiB rss_max={max(tally.rss):.1f}MiB "
            f"rss_growth_after_warmup={tally.rss_growth:.1f}MiB "
            f"seconds={seconds:.0f} rate={tally.decisions / max(seconds, 1e-9):.0f}/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--http-every", type=int, default=100, help="every Nth decision goes through HTTP")
    parser.add_argument("--fault-period", type=float, default=1.0, help="seconds per IdP fault phase")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--max-rss-growth", type=float, default=32.0,
                        help="MiB the RSS may grow after the first fifth of the run before it counts as a leak")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    else:
        runner = uvloop.run
    started = time.monotonic()
    tally = runner(soak(args.decisions, seed=args.seed, http_every=args.http_every,
                        fault_period=args.fault_period, quiet=args.quiet))
    if not args.quiet:
        for key, count in sorted(tally.outcomes.items()):
            print(f"  {key:<40} {count}", file=sys.stderr)
        for line in tally.wrong:
            print(f"  WRONG ALLOW: {line}", file=sys.stderr)
    print(summary(tally, time.monotonic() - started), flush=True)
    leak = tally.rss_growth > args.max_rss_growth
    if leak:
        print(f"RSS grew {tally.rss_growth:.1f}MiB after warm-up (limit {args.max_rss_growth}MiB)", file=sys.stderr)
    return 1 if tally.wrong_allows or tally.errors or leak else 0


if __name__ == "__main__":
    sys.exit(main())
