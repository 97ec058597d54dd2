"""Helpers shared by the Python tests of giftxd (test_story.py,
test_trust.py): grpcio stubs generated from proto/ at test time, a free
loopback port, the AIP-193 details of an error, a code's check character.
"""

import socket
import sys
from pathlib import Path

import grpc
from google.rpc import error_details_pb2, status_pb2

ROOT = Path(__file__).resolve().parents[2]


def generate_stubs(out: Path) -> None:
    """Compiles proto/giftx/v1/*.proto into `out` and puts it on sys.path."""
    from grpc_tools import protoc
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto/giftx/v1").glob("*.proto"))
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    sys.path.insert(0, str(out))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_details(err: grpc.RpcError):
    """The AIP-193 details of an error: (ErrorInfo, BadRequest)."""
    info, bad = None, None
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            st = status_pb2.Status.FromString(value)
            for d in st.details:
                if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    d.Unpack(info)
                elif d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    d.Unpack(bad)
    return info, bad


def fix_check(code: str) -> str:
    """Appends the check character, computed independently of giftx:
    GF(32) under x^5 + x^2 + 1, weights alpha^1.. for the data symbols."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

    def mul(a: int, b: int) -> int:
        p = 0
        while b:
            if b & 1:
                p ^= a
            b >>= 1
            a <<= 1
            if a & 0x20:
                a ^= 0x25
        return p

    data = code.replace("-", "")[:15]
    weight, total = 1, 0
    for ch in data:
        weight = mul(weight, 2)
        total ^= mul(weight, alphabet.index(ch))
    return data + alphabet[total]
