"""The giftx.v1 API from an independent client: Python grpcio stubs
generated from proto/ at test time, against a real giftxd process.

Run by scripts/test.sh as `python3 tests/python/test_story.py`; needs the
packages in requirements.txt and GIFTXD pointing at a built giftxd.
"""

import importlib
import os
import signal
import subprocess
import tempfile
import unittest
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from giftx_test_support import ROOT, fix_check, free_port, generate_stubs, status_details

SERVICES = ["giftx.v1.IssuanceService", "giftx.v1.ExchangeService", "giftx.v1.ExpiryService"]


class Giftxd:
    def __init__(self, *args: str):
        self.port = free_port()
        env = dict(os.environ, GIFTX_LISTEN=f"127.0.0.1:{self.port}", GIFTX_LOG="warn")
        env.pop("GIFTX_REDIS_URL", None)
        binary = os.environ.get("GIFTXD", str(ROOT / "target/debug/giftxd"))
        self.proc = subprocess.Popen([binary, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        grpc.channel_ready_future(self.channel).result(timeout=30)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


class StoryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        generate_stubs(Path(cls.tmp.name))
        cls.pb = importlib.import_module("giftx.v1.exchange_pb2")
        cls.ipb = importlib.import_module("giftx.v1.issuance_pb2")
        cls.igrpc = importlib.import_module("giftx.v1.issuance_pb2_grpc")
        cls.xgrpc = importlib.import_module("giftx.v1.exchange_pb2_grpc")
        cls.cpb = importlib.import_module("giftx.v1.common_pb2")
        cls.server = Giftxd()
        cls.issuance = cls.igrpc.IssuanceServiceStub(cls.server.channel)
        cls.exchange = cls.xgrpc.ExchangeServiceStub(cls.server.channel)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    def issue_one(self, campaign: str):
        stream = self.issuance.IssueCodes(
            self.ipb.IssueCodesRequest(campaign=campaign, batch_id=f"py-{uuid.uuid4().hex[:12]}", count=1)
        )
        codes = list(stream)
        self.assertEqual(len(codes), 1)
        return codes[0]

    def test_health_reports_every_service_serving(self):
        stub = health_pb2_grpc.HealthStub(self.server.channel)
        for name in ["", *SERVICES]:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=name))
            self.assertEqual(resp.status, health_pb2.HealthCheckResponse.SERVING, name)

    def test_reflection_lists_and_describes_the_services(self):
        stub = reflection_pb2_grpc.ServerReflectionStub(self.server.channel)
        reqs = [reflection_pb2.ServerReflectionRequest(list_services="")]
        reqs += [reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in SERVICES]
        responses = list(stub.ServerReflectionInfo(iter(reqs)))
        listed = {s.name for s in responses[0].list_services_response.service}
        self.assertTrue(set(SERVICES) <= listed, listed)
        for r in responses[1:]:
            self.assertTrue(r.file_descriptor_response.file_descriptor_proto, r)

    def test_the_story_from_letter_to_e_money(self):
        letter = self.issue_one("campaigns/demo-2014")
        status = self.exchange.VerifyCode(self.pb.VerifyCodeRequest(code=letter.code, login_key=letter.login_key))
        self.assertEqual(status.state, self.cpb.CODE_STATE_ACTIVE)
        self.assertEqual(status.face_value.currency_code, "JPY")
        self.assertIn("select-gift", [o.option_id for o in status.options])

        select = self.exchange.Exchange(
            self.pb.ExchangeRequest(
                code=letter.code,
                login_key=letter.login_key,
                option_id="select-gift",
                request_id=str(uuid.uuid4()),
                contact_email="holder@example.com",
                stop_mail=True,
            )
        )
        self.assertEqual(select.state, self.cpb.EXCHANGE_STATE_SUCCEEDED)
        gift_id, management_number = select.deliverable.code, select.deliverable.pin

        gift = self.exchange.VerifyCode(self.pb.VerifyCodeRequest(code=gift_id, login_key=management_number))
        self.assertEqual(gift.campaign, "campaigns/demo-select")
        self.assertEqual(gift.state, self.cpb.CODE_STATE_ACTIVE)

        request = self.pb.ExchangeRequest(
            code=gift_id, login_key=management_number, option_id="emoney-a", request_id=str(uuid.uuid4())
        )
        emoney = self.exchange.Exchange(request)
        self.assertEqual(emoney.state, self.cpb.EXCHANGE_STATE_SUCCEEDED)
        self.assertTrue(emoney.deliverable.code)
        self.assertEqual(self.exchange.Exchange(request), emoney, "a retry returns the same exchange")

        again = self.exchange.GetExchange(self.pb.GetExchangeRequest(code=gift_id, login_key=management_number))
        self.assertEqual(again.name, emoney.name)
        self.assertEqual(again.deliverable.code, emoney.deliverable.code)

        with self.assertRaises(grpc.RpcError) as e:
            self.exchange.Exchange(
                self.pb.ExchangeRequest(
                    code=gift_id, login_key=management_number, option_id="emoney-b", request_id=str(uuid.uuid4())
                )
            )
        self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        info, _ = status_details(e.exception)
        self.assertEqual(info.reason, "CODE_ALREADY_REDEEMED")

    def test_wrong_login_key_and_unknown_code_look_the_same(self):
        letter = self.issue_one("campaigns/demo-2014")
        other = self.issue_one("campaigns/demo-2014")
        answers = []
        for code, key in [(letter.code, other.login_key), ("0000-0000-0000-0000", letter.login_key)]:
            if code.startswith("0000"):
                # A well-formed code nobody was given: fix its check character.
                code = self.fix_check(code)
            with self.assertRaises(grpc.RpcError) as e:
                self.exchange.VerifyCode(self.pb.VerifyCodeRequest(code=code, login_key=key))
            info, _ = status_details(e.exception)
            answers.append((e.exception.code(), info.reason if info else None))
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(answers[0][0], grpc.StatusCode.NOT_FOUND)

    fix_check = staticmethod(fix_check)

    def test_malformed_requests_name_the_field(self):
        cases = [
            (self.pb.ExchangeRequest(code="", login_key="x", option_id="a", request_id="r"), "code"),
            (self.pb.ExchangeRequest(code="ABCD-EFGH-JKMN-PQRS", login_key="AAAA-AAAA", option_id="a", request_id=""), None),
        ]
        for req, field in cases:
            with self.assertRaises(grpc.RpcError) as e:
                self.exchange.Exchange(req)
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            _, bad = status_details(e.exception)
            self.assertIsNotNone(bad)
            fields = {v.field for v in bad.field_violations}
            if field:
                self.assertIn(field, fields)
        with self.assertRaises(grpc.RpcError) as e:
            list(self.issuance.IssueCodes(self.ipb.IssueCodesRequest(campaign="campaigns/demo-2014", batch_id="b", count=0)))
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        _, bad = status_details(e.exception)
        self.assertIn("count", {v.field for v in bad.field_violations})


class SubsetTest(unittest.TestCase):
    def test_serving_only_exchange_hides_the_others_and_sigterm_exits_zero(self):
        server = Giftxd("--services", "exchange")
        try:
            stub = health_pb2_grpc.HealthStub(server.channel)
            ok = stub.Check(health_pb2.HealthCheckRequest(service="giftx.v1.ExchangeService"))
            self.assertEqual(ok.status, health_pb2.HealthCheckResponse.SERVING)
            with self.assertRaises(grpc.RpcError) as e:
                stub.Check(health_pb2.HealthCheckRequest(service="giftx.v1.IssuanceService"))
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            call = server.channel.unary_unary("/giftx.v1.IssuanceService/ListCampaigns")
            with self.assertRaises(grpc.RpcError) as e:
                call(b"")
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        finally:
            self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
