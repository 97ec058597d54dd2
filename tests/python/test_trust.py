"""Trust from an independent client: a Python grpcio client reaches giftxd
over TLS and mTLS, an admin makes API keys with giftctl, and the story runs
as tenant "acme" while tenant "bravo"'s keys get nothing of acme's.

Run by scripts/test.sh as `python3 tests/python/test_trust.py`; needs the
packages in requirements.txt, the openssl CLI, GIFTXD pointing at a built
giftxd and GIFTCTL at a built giftctl. The PKI is made here, throwaway, in a
temporary directory; giftxd runs on its embedded ledger (no Redis).
"""

import importlib
import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
import unittest
import uuid
from pathlib import Path

# The handshakes refused on purpose below make grpc core log errors; quiet
# unless asked for (GRPC_VERBOSITY=DEBUG). Failures still carry the details.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402
from google.protobuf import timestamp_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from giftx_test_support import ROOT, fix_check, free_port, generate_stubs, status_details  # noqa: E402

GIFTXD = os.environ.get("GIFTXD", str(ROOT / "target/debug/giftxd"))
GIFTCTL = os.environ.get("GIFTCTL", str(ROOT / "target/debug/giftctl"))
TIMEOUT = 10  # seconds, per RPC

# Set in setUpModule.
TMP: Path = None  # type: ignore[assignment]
PKI: "Pki" = None  # type: ignore[assignment]
pb = {}


def clean_env(**extra: str) -> dict:
    """The environment without any GIFTX_ setting of the caller's (a Redis
    URL, a token, an address), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIFTX_") and k not in ("RUST_LOG",)}
    env.update(extra)
    return env


# ---------------------------------------------------------------------------
# A throwaway PKI, made with the openssl CLI.


class Pki:
    """CA, a server certificate for 127.0.0.1/localhost, a client certificate
    signed by the CA, and an unrelated CA with a client certificate of its
    own. ECDSA P-256 throughout."""

    def __init__(self, d: Path):
        self.d = d
        d.mkdir(parents=True, exist_ok=True)
        self.ca = self._ca("ca", "giftx test CA")
        self.server = self._leaf(
            "server", "localhost", self.ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        )
        self.client = self._leaf("client", "giftx test client", self.ca, "extendedKeyUsage=clientAuth\n")
        self.rogue_ca = self._ca("rogue-ca", "unrelated CA")
        self.rogue_client = self._leaf("rogue-client", "giftx test client", self.rogue_ca, "extendedKeyUsage=clientAuth\n")

    @staticmethod
    def _run(*args: str) -> None:
        p = subprocess.run(["openssl", *args], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed:\n{p.stderr}")

    def _ca(self, name: str, cn: str):
        key, crt = self.d / f"{name}.key", self.d / f"{name}.crt"
        self._run(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={cn}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        return key, crt

    def _leaf(self, name: str, cn: str, ca, extensions: str):
        key, csr, crt, ext = (self.d / f"{name}.{e}" for e in ("key", "csr", "crt", "ext"))
        ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n" + extensions)
        self._run(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}",
        )  # fmt: skip
        self._run(
            "x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-set_serial",
            str(int.from_bytes(os.urandom(8), "big")), "-days", "2", "-out", str(crt), "-extfile", str(ext),
        )  # fmt: skip
        return key, crt

    def credentials(self, client=None, roots=None) -> grpc.ChannelCredentials:
        """TLS credentials trusting `roots` (default: the CA), presenting
        `client` (a (key, cert) pair) if given."""
        root = (roots or self.ca)[1].read_bytes()
        if client is None:
            return grpc.ssl_channel_credentials(root_certificates=root)
        return grpc.ssl_channel_credentials(
            root_certificates=root, private_key=client[0].read_bytes(), certificate_chain=client[1].read_bytes()
        )


# ---------------------------------------------------------------------------
# giftxd with TLS, and giftctl against it.


class Giftxd:
    """A giftxd process on a free loopback port, TLS only, embedded ledger.
    `mtls`: client certificates signed by the CA required. `admin_token`:
    authentication on, with that bootstrap admin token (tenant "ops")."""

    def __init__(self, name: str, mtls: bool, admin_token: str = None):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.mtls = mtls
        self.log = TMP / f"giftxd-{name}.log"
        env = clean_env(
            GIFTX_LISTEN=self.addr,
            GIFTX_LOG="info",
            GIFTX_TLS_CERT_FILE=str(PKI.server[1]),
            GIFTX_TLS_KEY_FILE=str(PKI.server[0]),
            # Revocation takes effect at once, not within 2 s.
            GIFTX_AUTH_CACHE_MS="0",
            # Few wrong login keys lock a code: tenant bravo's tries must
            # not lock tenant acme's code.
            GIFTX_LOCKOUT_THRESHOLD="3",
        )
        if mtls:
            env["GIFTX_TLS_CLIENT_CA_FILE"] = str(PKI.ca[1])
        if admin_token is not None:
            token_file = TMP / f"admin-{name}.token"
            token_file.write_text(admin_token + "\n")
            token_file.chmod(0o600)
            env["GIFTX_ADMIN_TOKEN_FILE"] = str(token_file)
            env["GIFTX_ADMIN_TENANT"] = "ops"
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen([GIFTXD], env=env, stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while "listening on" not in self.log_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"giftxd exited with {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"giftxd did not start within 30 s:\n{self.log_text()}")
            time.sleep(0.05)
        self.channel = self.secure_channel(PKI.client if mtls else None)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def secure_channel(self, client=None, roots=None) -> grpc.Channel:
        return grpc.secure_channel(self.addr, PKI.credentials(client, roots))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()

    def giftctl(self, token: str, *args: str, client=True, check=True) -> subprocess.CompletedProcess:
        """Runs giftctl against this giftxd over TLS (with the client
        certificate under mTLS when `client`), as `token`."""
        conn = ["--addr", f"https://{self.addr}", "--ca-cert", str(PKI.ca[1])]
        if self.mtls and client:
            conn += ["--client-cert", str(PKI.client[1]), "--client-key", str(PKI.client[0])]
        if token is not None:
            conn += ["--token", token]
        p = subprocess.run([GIFTCTL, *conn, *args], env=clean_env(), capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"giftctl {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def create_key(self, admin: str, tenant: str, role: str) -> dict:
        p = self.giftctl(admin, "keys", "create", "--tenant", tenant, "--role", role, "--json")
        key = json.loads(p.stdout)
        for field in ("token", "name", "tenant", "role"):
            if field not in key:
                raise AssertionError(f"giftctl keys create --json: no {field!r} in {p.stdout}")
        return key


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


def error_of(call, *args, **kwargs):
    """Calls `call` (a unary stub method, or a function) and returns the
    grpc.RpcError it fails with; fails the test if it succeeds."""
    try:
        result = call(*args, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "SerializeToString"):
            list(result)  # a server stream: the error comes while reading
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"expected an error, got {result!r}")


def answer(err: grpc.RpcError):
    """What a caller can tell an error by: its code, its ErrorInfo (reason,
    domain, metadata) and its message."""
    info, _ = status_details(err)
    if info is None:
        return (err.code(), None, None, None, err.details())
    return (err.code(), info.reason, info.domain, tuple(sorted(info.metadata.items())), err.details())


def setUpModule():
    global TMP, PKI
    tmp = tempfile.TemporaryDirectory()
    unittest.addModuleCleanup(tmp.cleanup)
    TMP = Path(tmp.name)
    (TMP / "stubs").mkdir()
    generate_stubs(TMP / "stubs")
    for mod in ("common", "issuance", "exchange", "expiry", "access"):
        pb[mod] = importlib.import_module(f"giftx.v1.{mod}_pb2")
        pb[mod + "_grpc"] = importlib.import_module(f"giftx.v1.{mod}_pb2_grpc")
    PKI = Pki(TMP / "pki")


# ---------------------------------------------------------------------------
# mTLS + API keys: the story as acme, nothing of it for bravo.


class TenantsOverMutualTlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.admin = "adm-" + secrets.token_hex(24)
        cls.server = Giftxd("mtls", mtls=True, admin_token=cls.admin)
        cls.addClassCleanup(cls.server.stop)
        ch = cls.server.channel
        cls.issuance = pb["issuance_grpc"].IssuanceServiceStub(ch)
        cls.exchange = pb["exchange_grpc"].ExchangeServiceStub(ch)
        cls.expiry = pb["expiry_grpc"].ExpiryServiceStub(ch)
        cls.access = pb["access_grpc"].AccessServiceStub(ch)
        cls.health = health_pb2_grpc.HealthStub(ch)
        # The keys, made by the admin with giftctl.
        cls.keys = {}
        for tenant in ("acme", "bravo"):
            for role in ("operator", "portal"):
                key = cls.server.create_key(cls.admin, tenant, role)
                assert key["tenant"] == tenant and role in str(key["role"]).lower(), key
                assert key["token"].startswith("gx1."), key
                cls.keys[tenant, role] = key["token"]

    def md(self, tenant: str, role: str):
        return bearer(self.keys[tenant, role])

    # -- what acme does ------------------------------------------------------

    def create_campaign(self, tenant: str, expire_in_days: int = 30):
        ipb, cpb = pb["issuance"], pb["common"]
        expire = timestamp_pb2.Timestamp()
        expire.FromSeconds(int(time.time()) + expire_in_days * 86400)
        campaign_id = f"{tenant}-{uuid.uuid4().hex[:10]}"
        campaign = self.issuance.CreateCampaign(
            ipb.CreateCampaignRequest(
                campaign_id=campaign_id,
                campaign=ipb.Campaign(
                    display_name=f"{tenant}'s apology",
                    face_value=cpb.Money(currency_code="JPY", minor_units=1000),
                    expire_time=expire,
                    options=[cpb.RedemptionOption(option_id="emoney", display_name="E-money A", provider="emoney-a")],
                    owner=tenant,
                ),
                request_id=str(uuid.uuid4()),
            ),
            metadata=self.md(tenant, "operator"),
            timeout=TIMEOUT,
        )
        self.assertEqual(campaign.name, f"campaigns/{campaign_id}")
        self.assertEqual(campaign.tenant, tenant)
        return campaign

    def issue(self, tenant: str, campaign: str, count: int):
        batch_id = f"b-{uuid.uuid4().hex[:10]}"
        codes = list(
            self.issuance.IssueCodes(
                pb["issuance"].IssueCodesRequest(campaign=campaign, batch_id=batch_id, count=count),
                metadata=self.md(tenant, "operator"),
                timeout=TIMEOUT,
            )
        )
        self.assertEqual(len(codes), count)
        return f"{campaign}/batches/{batch_id}", codes

    def test_the_story_as_acme(self):
        xpb, cpb = pb["exchange"], pb["common"]
        campaign = self.create_campaign("acme")
        again = self.issuance.GetCampaign(
            pb["issuance"].GetCampaignRequest(name=campaign.name), metadata=self.md("acme", "operator"), timeout=TIMEOUT
        )
        self.assertEqual(again.tenant, "acme")
        _, (letter,) = self.issue("acme", campaign.name, 1)

        portal = self.md("acme", "portal")
        status = self.exchange.VerifyCode(
            xpb.VerifyCodeRequest(code=letter.code, login_key=letter.login_key), metadata=portal, timeout=TIMEOUT
        )
        self.assertEqual(status.campaign, campaign.name)
        self.assertEqual(status.state, cpb.CODE_STATE_ACTIVE)
        self.assertEqual(status.face_value.minor_units, 1000)
        self.assertEqual([o.option_id for o in status.options], ["emoney"])

        request = xpb.ExchangeRequest(
            code=letter.code, login_key=letter.login_key, option_id="emoney", request_id=str(uuid.uuid4())
        )
        done = self.exchange.Exchange(request, metadata=portal, timeout=TIMEOUT)
        self.assertEqual(done.state, cpb.EXCHANGE_STATE_SUCCEEDED)
        self.assertEqual(done.campaign, campaign.name)
        self.assertTrue(done.deliverable.code, done)

        shown = self.exchange.GetExchange(
            xpb.GetExchangeRequest(code=letter.code, login_key=letter.login_key), metadata=portal, timeout=TIMEOUT
        )
        self.assertEqual(shown.name, done.name)
        self.assertEqual(shown.deliverable.code, done.deliverable.code)

        stats = self.issuance.GetCampaignStats(
            pb["issuance"].GetCampaignStatsRequest(campaign=campaign.name),
            metadata=self.md("acme", "operator"),
            timeout=TIMEOUT,
        )
        self.assertEqual(stats.issued_count, 1)
        redeemed = {s.state: s.count for s in stats.by_state}
        self.assertEqual(redeemed.get(cpb.CODE_STATE_REDEEMED), 1, stats)

    # -- what bravo gets of it: nothing ---------------------------------------

    def test_bravo_operator_gets_nothing_of_acme(self):
        ipb, epb = pb["issuance"], pb["expiry"]
        acme = self.md("acme", "operator")
        bravo = self.md("bravo", "operator")
        campaign = self.create_campaign("acme")
        batch, _ = self.issue("acme", campaign.name, 2)
        own = self.create_campaign("bravo")
        self.assertNotEqual(own.code_series, "", own)

        missing = "campaigns/nobody-" + uuid.uuid4().hex[:8]
        later = timestamp_pb2.Timestamp()
        later.FromSeconds(campaign.expire_time.seconds + 86400)

        def calls(name: str):
            """Every operator call that names campaign `name`."""
            return {
                "GetCampaign": lambda: self.issuance.GetCampaign(
                    ipb.GetCampaignRequest(name=name), metadata=bravo, timeout=TIMEOUT
                ),
                "GetCampaignStats": lambda: self.issuance.GetCampaignStats(
                    ipb.GetCampaignStatsRequest(campaign=name), metadata=bravo, timeout=TIMEOUT
                ),
                "GetBatch": lambda: self.issuance.GetBatch(
                    ipb.GetBatchRequest(name=batch.replace(campaign.name, name)), metadata=bravo, timeout=TIMEOUT
                ),
                "VoidBatch": lambda: self.issuance.VoidBatch(
                    ipb.VoidBatchRequest(name=batch.replace(campaign.name, name)), metadata=bravo, timeout=TIMEOUT
                ),
                "IssueCodes": lambda: self.issuance.IssueCodes(
                    ipb.IssueCodesRequest(campaign=name, batch_id="b-bravo", count=1), metadata=bravo, timeout=TIMEOUT
                ),
                "ExtendCampaign": lambda: self.expiry.ExtendCampaign(
                    epb.ExtendCampaignRequest(campaign=name, expire_time=later), metadata=bravo, timeout=TIMEOUT
                ),
                "SweepExpired": lambda: self.expiry.SweepExpired(
                    epb.SweepExpiredRequest(campaign=name), metadata=bravo, timeout=TIMEOUT
                ),
            }

        unknown = {method: answer(error_of(call)) for method, call in calls(missing).items()}
        for method, call in calls(campaign.name).items():
            with self.subTest(method=method):
                got = answer(error_of(call))
                self.assertEqual(got[0], grpc.StatusCode.NOT_FOUND, got)
                # Exactly what a campaign nobody has gets.
                self.assertEqual(got, unknown[method])

        # Bravo's listing holds its own campaign and nobody else's.
        listed = self.issuance.ListCampaigns(ipb.ListCampaignsRequest(page_size=1000), metadata=bravo, timeout=TIMEOUT)
        self.assertIn(own.name, [c.name for c in listed.campaigns])
        self.assertNotIn(campaign.name, [c.name for c in listed.campaigns])
        self.assertEqual({c.tenant for c in listed.campaigns}, {"bravo"})
        self.assertFalse(listed.next_page_token)
        # And acme's holds acme's.
        listed = self.issuance.ListCampaigns(ipb.ListCampaignsRequest(page_size=1000), metadata=acme, timeout=TIMEOUT)
        self.assertIn(campaign.name, [c.name for c in listed.campaigns])
        self.assertEqual({c.tenant for c in listed.campaigns}, {"acme"})

        # Nothing bravo did reached acme's campaign: the batch is not void,
        # the deadline did not move, no code was issued for bravo.
        got = self.issuance.GetBatch(ipb.GetBatchRequest(name=batch), metadata=acme, timeout=TIMEOUT)
        self.assertEqual(got.state, ipb.BATCH_STATE_COMPLETE)
        self.assertEqual(got.issued_count, 2)
        got = self.issuance.GetCampaign(ipb.GetCampaignRequest(name=campaign.name), metadata=acme, timeout=TIMEOUT)
        self.assertEqual(got.expire_time, campaign.expire_time)
        stats = self.issuance.GetCampaignStats(
            ipb.GetCampaignStatsRequest(campaign=campaign.name), metadata=acme, timeout=TIMEOUT
        )
        self.assertEqual(stats.issued_count, 2)
        # The admin (tenant "ops") reaches every tenant's campaign.
        got = self.issuance.GetCampaign(
            ipb.GetCampaignRequest(name=campaign.name), metadata=bearer(self.admin), timeout=TIMEOUT
        )
        self.assertEqual(got.tenant, "acme")

        # Bravo's audit trail holds bravo's calls only.
        deadline = time.monotonic() + 5
        while True:  # audit events are written asynchronously
            events = self.access.ListAuditEvents(
                pb["access"].ListAuditEventsRequest(page_size=1000), metadata=bravo, timeout=TIMEOUT
            ).events
            if any(e.resource == campaign.name for e in events) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # Bravo's refused calls on acme's campaign are in it, as bravo's.
        self.assertIn(campaign.name, {e.resource for e in events})
        self.assertEqual({e.tenant for e in events}, {"bravo"})

    def test_bravo_portal_gets_of_acme_codes_what_a_made_up_code_gets(self):
        xpb, cpb = pb["exchange"], pb["common"]
        campaign = self.create_campaign("acme")
        _, (redeemed, fresh) = self.issue("acme", campaign.name, 2)
        acme_portal = self.md("acme", "portal")
        done = self.exchange.Exchange(
            xpb.ExchangeRequest(
                code=redeemed.code, login_key=redeemed.login_key, option_id="emoney", request_id=str(uuid.uuid4())
            ),
            metadata=acme_portal,
            timeout=TIMEOUT,
        )
        self.assertEqual(done.state, cpb.EXCHANGE_STATE_SUCCEEDED)

        bravo = self.md("bravo", "portal")

        def probe(code: str, login_key: str):
            """What bravo's portal gets, call after call, for a code: more
            tries than the lockout threshold (3)."""
            seq = [
                ("GetExchange", xpb.GetExchangeRequest(code=code, login_key=login_key), self.exchange.GetExchange),
                ("VerifyCode", xpb.VerifyCodeRequest(code=code, login_key=login_key), self.exchange.VerifyCode),
                (
                    "Exchange",
                    xpb.ExchangeRequest(code=code, login_key=login_key, option_id="emoney", request_id="r-bravo"),
                    self.exchange.Exchange,
                ),
                ("VerifyCode", xpb.VerifyCodeRequest(code=code, login_key=login_key), self.exchange.VerifyCode),
                ("VerifyCode", xpb.VerifyCodeRequest(code=code, login_key=login_key), self.exchange.VerifyCode),
            ]
            return [(m, answer(error_of(call, req, metadata=bravo, timeout=TIMEOUT))) for m, req, call in seq]

        def made_up(series: str) -> str:
            """A well-formed code nobody was given (each call a new one:
            wrong tries are counted per code)."""
            digits = str(uuid.uuid4().int)
            return fix_check(series + digits[: 15 - len(series)])

        for code, login_key in [(redeemed.code, redeemed.login_key), (fresh.code, fresh.login_key)]:
            got = probe(code, login_key)
            with self.subTest(code=code):
                self.assertEqual(got[0][1][:2], (grpc.StatusCode.NOT_FOUND, "LOGIN_KEY_MISMATCH"), got)
                self.assertEqual(got[1][1][:2], (grpc.StatusCode.NOT_FOUND, "LOGIN_KEY_MISMATCH"), got)
                # A made-up code of acme's series, and one of a series
                # nobody has, get the very same answers.
                for other in (made_up(campaign.code_series), made_up("ZZ")):
                    self.assertEqual(got, probe(other, login_key), f"{code} vs made-up {other}")
                # Bravo's wrong tries were counted (and locked what bravo
                # tried) ...
                self.assertEqual(got[-1][1][:2], (grpc.StatusCode.FAILED_PRECONDITION, "CODE_LOCKED"), got)

        # ... but acme's codes were neither locked nor touched by any of it.
        status = self.exchange.VerifyCode(
            xpb.VerifyCodeRequest(code=fresh.code, login_key=fresh.login_key), metadata=acme_portal, timeout=TIMEOUT
        )
        self.assertEqual(status.state, cpb.CODE_STATE_ACTIVE)
        self.assertFalse(status.HasField("exchange"), status)
        shown = self.exchange.GetExchange(
            xpb.GetExchangeRequest(code=redeemed.code, login_key=redeemed.login_key),
            metadata=acme_portal,
            timeout=TIMEOUT,
        )
        self.assertEqual(shown.name, done.name)
        self.assertEqual(shown.deliverable.code, done.deliverable.code)

    # -- roles and principals --------------------------------------------------

    def test_roles_reach_only_their_services(self):
        ipb, xpb, apb = pb["issuance"], pb["exchange"], pb["access"]
        list_campaigns = lambda md: self.issuance.ListCampaigns(ipb.ListCampaignsRequest(), metadata=md, timeout=TIMEOUT)
        verify = lambda md: self.exchange.VerifyCode(
            xpb.VerifyCodeRequest(code=fix_check("ZZ0000000000000"), login_key=fix_check("AAAAAAA")),
            metadata=md,
            timeout=TIMEOUT,
        )
        create_key = lambda md: self.access.CreateApiKey(
            apb.CreateApiKeyRequest(api_key=apb.ApiKey(tenant="bravo", role=apb.ROLE_ADMIN)), metadata=md, timeout=TIMEOUT
        )
        refused = [
            ("bravo portal: IssuanceService", lambda: list_campaigns(self.md("bravo", "portal"))),
            ("bravo portal: AccessService", lambda: create_key(self.md("bravo", "portal"))),
            ("acme operator: ExchangeService", lambda: verify(self.md("acme", "operator"))),
            ("acme operator: CreateApiKey", lambda: create_key(self.md("acme", "operator"))),
        ]
        for what, call in refused:
            with self.subTest(what):
                e = error_of(call)
                info, _ = status_details(e)
                self.assertEqual(e.code(), grpc.StatusCode.PERMISSION_DENIED, e.details())
                self.assertEqual(info.reason, "ROLE_NOT_ALLOWED")
        # The portal key does reach ExchangeService (an unknown code).
        e = error_of(verify, self.md("bravo", "portal"))
        self.assertEqual(answer(e)[:2], (grpc.StatusCode.NOT_FOUND, "LOGIN_KEY_MISMATCH"))

    def test_calls_without_a_valid_token_are_unauthenticated(self):
        ipb = pb["issuance"]
        list_campaigns = lambda md: self.issuance.ListCampaigns(ipb.ListCampaignsRequest(), metadata=md, timeout=TIMEOUT)
        cases = [
            ("API_KEY_MISSING", None),
            ("API_KEY_INVALID", bearer("gx1.0123456789abcdef." + secrets.token_hex(16))),
            ("API_KEY_INVALID", bearer("not-a-token")),
        ]
        for reason, md in cases:
            with self.subTest(reason=reason, md=md):
                e = error_of(list_campaigns, md)
                info, _ = status_details(e)
                self.assertEqual(e.code(), grpc.StatusCode.UNAUTHENTICATED, e.details())
                self.assertEqual(info.reason, reason)
        # Health stays open without a token.
        resp = self.health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        self.assertEqual(resp.status, health_pb2.HealthCheckResponse.SERVING)

    def test_a_revoked_key_is_refused_at_once(self):
        ipb = pb["issuance"]
        key = self.server.create_key(self.admin, "bravo", "operator")
        md = bearer(key["token"])
        self.issuance.ListCampaigns(ipb.ListCampaignsRequest(), metadata=md, timeout=TIMEOUT)

        p = self.server.giftctl(self.admin, "keys", "revoke", key["name"], "--json")
        self.assertTrue(json.loads(p.stdout).get("revoke_time"), p.stdout)
        e = error_of(self.issuance.ListCampaigns, ipb.ListCampaignsRequest(), metadata=md, timeout=TIMEOUT)
        info, _ = status_details(e)
        self.assertEqual(e.code(), grpc.StatusCode.UNAUTHENTICATED, e.details())
        self.assertEqual(info.reason, "API_KEY_REVOKED")
        # The other keys still work.
        self.issuance.ListCampaigns(ipb.ListCampaignsRequest(), metadata=self.md("bravo", "operator"), timeout=TIMEOUT)

        listed = json.loads(self.server.giftctl(self.admin, "keys", "list", "--tenant", "bravo", "--json").stdout)
        names = {k["name"]: k for k in listed["api_keys"]}
        self.assertIn(key["name"], names)
        self.assertTrue(names[key["name"]].get("revoke_time"), names[key["name"]])
        self.assertNotIn("token", json.dumps(listed).replace("page_token", ""), "keys list never shows tokens")

    # -- transport ---------------------------------------------------------------

    def test_mtls_requires_a_client_certificate_of_the_ca(self):
        good = self.server.secure_channel(PKI.client)
        try:
            resp = health_pb2_grpc.HealthStub(good).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            self.assertEqual(resp.status, health_pb2.HealthCheckResponse.SERVING)
        finally:
            good.close()
        for what, client in [("no client certificate", None), ("another CA's client certificate", PKI.rogue_client)]:
            with self.subTest(what):
                ch = self.server.secure_channel(client)
                try:
                    e = error_of(health_pb2_grpc.HealthStub(ch).Check, health_pb2.HealthCheckRequest(), timeout=5)
                    self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())
                finally:
                    ch.close()
        # giftctl without the client certificate is refused too.
        p = self.server.giftctl(self.admin, "keys", "list", "--json", client=False, check=False)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn("--client-cert", p.stderr)


# ---------------------------------------------------------------------------
# TLS without client certificates.


class ServerTlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Giftxd("tls", mtls=False)
        cls.addClassCleanup(cls.server.stop)

    def check(self, channel: grpc.Channel, timeout=TIMEOUT):
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        finally:
            channel.close()

    def test_a_client_trusting_the_ca_is_served(self):
        self.assertEqual(self.check(self.server.secure_channel()).status, health_pb2.HealthCheckResponse.SERVING)
        ch = self.server.secure_channel()
        try:
            listed = pb["issuance_grpc"].IssuanceServiceStub(ch).ListCampaigns(
                pb["issuance"].ListCampaignsRequest(), timeout=TIMEOUT
            )
            self.assertIn("campaigns/demo-2014", [c.name for c in listed.campaigns])
        finally:
            ch.close()
        # giftctl over https:// with the CA.
        p = self.server.giftctl(None, "campaign", "list", "--json")
        self.assertIn("demo-2014", p.stdout)

    def test_a_client_not_trusting_the_ca_fails(self):
        e = error_of(self.check, self.server.secure_channel(roots=PKI.rogue_ca), timeout=5)
        self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())

    def test_plaintext_to_the_tls_port_fails(self):
        e = error_of(self.check, grpc.insecure_channel(self.server.addr), timeout=5)
        self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())


if __name__ == "__main__":
    unittest.main(verbosity=2)
