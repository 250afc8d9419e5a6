#!/usr/bin/env python3
"""Independent check of the Weft event envelope test vectors.

This script re-implements, from docs/wire.md alone (it does not use or read the
Rust code), the decoding and verification of the Weft event envelope, and runs
it over every vector in docs/wire-vectors.json.

For each vector it:

1. decodes ``envelope_hex`` as the envelope of wire.md section 1 (a CBOR array
   of exactly 2 items: the body byte string and a 64-byte signature byte
   string), and applies the strict decoder rules of section 7 itself: input at
   most EVENT_LEN_MAX bytes; CBOR decoded with ``cbor2`` (no indefinite
   lengths, no duplicate keys, strict UTF-8), then re-encoded with the small
   RFC 8949 section 4.2.1 core deterministic encoder below (which only knows
   uint, bstr, tstr, array and map, so tags, floats, simple values, negative
   integers and null are rejected) and required to be byte-for-byte equal to
   what was received, for the envelope and for the body (this also rejects
   trailing bytes, non-shortest heads and keys out of order); the schema of
   sections 2-5 and the limits of section 9 (known keys only, required keys,
   CBOR types, version == 1, exactly one of keys 8/9, stream name, residency,
   scopes, trace context and key id grammars, sets strictly ascending);
2. builds signed_bytes = b"weft/event\\x00" + body and compares it with
   ``signed_bytes_hex``;
3. computes the event id SHA-256(signed_bytes) and compares it with
   ``id_hex``; compares the origin (body key 3) with ``public_key_hex`` and the
   signature with ``signature_hex``;
4. verifies the Ed25519 signature over signed_bytes with PyNaCl (libsodium's
   strict verification, wire.md section 8);
5. for sealed vectors (those with ``key_hex``): builds the associated data
   (canonical encoding of the body map without key 9), compares it with
   ``aad_hex``, checks key_id and nonce against ``key_id`` / ``nonce_hex``,
   opens the ciphertext with XChaCha20-Poly1305 and compares the plaintext
   with ``plaintext_hex``;
6. requires the verdict (accept / reject) to equal the vector's ``valid``,
   and prints which check rejected each invalid vector.

After the vectors it runs negative self-checks on the first valid vector (one
byte of the payload flipped, one byte of the signature flipped, one byte
appended) and requires each to be rejected, so the checker is shown to be able
to fail. It also fails if the file holds fewer than 6 vectors.

Exit status 0 only if every verdict matches and every comparison matched.

Dependencies (Python 3.11):

    python3 -m pip install cbor2 pynacl

Run from the repository root:

    python3 tools/check-wire-vectors.py [path/to/wire-vectors.json]

(the default vectors file is docs/wire-vectors.json next to this tools/ dir).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

import cbor2
import nacl.bindings
import nacl.exceptions
import nacl.signing

# --- wire.md section 9: limits -------------------------------------------------
EVENT_LEN_MAX = 1048576
HEADER_LEN_BUDGET = 8192
PAYLOAD_LEN_MAX = 1040384
STREAM_LEN_MAX = 255
STREAM_TOKENS_MAX = 16
STREAM_TOKEN_LEN_MAX = 64
KEY_LEN_MAX = 1024
NAME_LEN_MAX = 128
CLASSIFICATION_LEN_MAX = 64
RESIDENCY_LEN_MAX = 16
JURISDICTION_LEN_MAX = 16
SCOPES_LEN_MAX = 32
SCOPE_LEN_MAX = 64
CONTENT_TYPE_LEN_MAX = 127
TRACEPARENT_LEN = 55
TRACESTATE_LEN_MAX = 512
KEY_ID_LEN_MAX = 64

ENVELOPE_VERSION = 1
SIGNING_CONTEXT = b"weft/event\x00"  # section 1: 77 65 66 74 2f 65 76 65 6e 74 00
SIGNATURE_LEN = 64
ORIGIN_LEN = 32
NONCE_LEN = 24
TAG_LEN = 16
MIN_VECTORS = 6

assert SIGNING_CONTEXT == bytes.fromhex("776566742f6576656e7400")

# Field grammars (sections 2-5). re.fullmatch everywhere: `$` would accept a trailing "\n".
STREAM_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")
JURISDICTION_RE = re.compile(r"[A-Z][A-Z0-9-]+")
KEY_ID_RE = re.compile(r"[A-Za-z0-9._:/-]+")
TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


class Reject(Exception):
    """The envelope is not acceptable; the message says which check refused it."""


# --- RFC 8949 section 4.2.1 core deterministic encoder for the subset used here ---


def _head(major: int, n: int) -> bytes:
    """Shortest head for major type `major` and argument `n`."""
    if n < 0 or n > 0xFFFFFFFFFFFFFFFF:
        raise Reject(f"integer/length {n} outside the CBOR uint range")
    mt = major << 5
    if n < 24:
        return bytes([mt | n])
    if n <= 0xFF:
        return bytes([mt | 24]) + n.to_bytes(1, "big")
    if n <= 0xFFFF:
        return bytes([mt | 25]) + n.to_bytes(2, "big")
    if n <= 0xFFFFFFFF:
        return bytes([mt | 26]) + n.to_bytes(4, "big")
    return bytes([mt | 27]) + n.to_bytes(8, "big")


def canon(obj: Any, path: str = "$") -> bytes:
    """Canonical encoding of uint / bstr / tstr / array / map-with-uint-keys.

    Anything else cbor2 may have produced (bool, None, float, negative int,
    CBORTag, CBORSimpleValue, datetime, set, ...) cannot be part of a valid
    envelope (section 7 rule 4) and is rejected.
    """
    t = type(obj)
    if t is int:
        if obj < 0:
            raise Reject(f"{path}: negative integer {obj} not allowed")
        return _head(0, obj)
    if t is bytes:
        return _head(2, len(obj)) + obj
    if t is str:
        raw = obj.encode("utf-8")
        return _head(3, len(raw)) + raw
    if t is list:
        return _head(4, len(obj)) + b"".join(canon(x, f"{path}[{i}]") for i, x in enumerate(obj))
    if t is dict:
        for k in obj:
            if type(k) is not int or k < 0:
                raise Reject(f"{path}: map key {k!r} is not an unsigned integer")
        # For uint keys, the bytewise order of the shortest encodings is numeric order.
        items = sorted(obj.items(), key=lambda kv: canon(kv[0]))
        return _head(5, len(obj)) + b"".join(canon(k) + canon(v, f"{path}.{k}") for k, v in items)
    raise Reject(f"{path}: {t.__name__} value {obj!r} is not allowed (no tags, floats, simple values or null)")


def cbor_decode(data: bytes, what: str) -> Any:
    try:
        return cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=False, str_errors="strict")
    except Exception as e:  # cbor2.CBORDecodeError and anything its semantic decoders raise
        raise Reject(f"{what}: not well-formed strict CBOR: {e}") from None


def require_canonical(received: bytes, value: Any, what: str, base: int = 0) -> None:
    """Byte-for-byte comparison with the canonical re-encoding (section 7)."""
    expected = canon(value, what)
    if received == expected:
        return
    if received.startswith(expected):
        raise Reject(f"{what}: {len(received) - len(expected)} trailing byte(s) after the item at byte {base + len(expected)}")
    n = min(len(received), len(expected))
    first = next((i for i in range(n) if received[i] != expected[i]), n)
    raise Reject(f"{what}: non-canonical encoding, first difference from the canonical form at byte {base + first}"
                 f" (received {received[first:first + 3].hex() or 'end'}, canonical {expected[first:first + 3].hex() or 'end'})")


# --- schema (sections 2-5) -------------------------------------------------------


def _uint(v: Any, name: str) -> int:
    if type(v) is not int or v < 0:
        got = "negative integer" if type(v) is int else type(v).__name__
        raise Reject(f"{name}: expected uint, got {got}")
    return v


def _bstr(v: Any, name: str, lo: int, hi: int) -> bytes:
    if type(v) is not bytes:
        raise Reject(f"{name}: expected bstr, got {type(v).__name__}")
    if not lo <= len(v) <= hi:
        raise Reject(f"{name}: length {len(v)} outside {lo}..{hi} bytes")
    return v


def _tstr(v: Any, name: str, lo: int, hi: int) -> str:
    if type(v) is not str:
        raise Reject(f"{name}: expected tstr, got {type(v).__name__}")
    n = len(v.encode("utf-8"))
    if not lo <= n <= hi:
        raise Reject(f"{name}: length {n} outside {lo}..{hi} bytes")
    return v


def _ascii_range(s: str, name: str, lo: int, hi: int) -> None:
    bad = next((c for c in s if not lo <= ord(c) <= hi), None)
    if bad is not None:
        raise Reject(f"{name}: character {bad!r} outside 0x{lo:02x}-0x{hi:02x}")


def _no_control(s: str, name: str) -> None:
    # "no (Unicode) control characters": read as Unicode general category Cc
    # (U+0000-U+001F, U+007F-U+009F), which is also Rust's char::is_control.
    bad = next((c for c in s if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise Reject(f"{name}: control character {bad!r}")


def _map(v: Any, name: str, known: set[int], required: set[int]) -> dict:
    if type(v) is not dict:
        raise Reject(f"{name}: expected map, got {type(v).__name__}")
    for k in v:
        if type(k) is not int or k < 0:
            raise Reject(f"{name}: map key {k!r} is not an unsigned integer")
    unknown = sorted(k for k in v if k not in known)
    if unknown:
        raise Reject(f"{name}: unknown field {unknown[0]} (new fields need a new envelope version)")
    missing = sorted(required - v.keys())
    if missing:
        raise Reject(f"{name}: missing required field {missing[0]}")
    return v


def _tstr_set(v: Any, name: str, max_items: int) -> list[str]:
    if type(v) is not list:
        raise Reject(f"{name}: expected array, got {type(v).__name__}")
    if not 1 <= len(v) <= max_items:
        raise Reject(f"{name}: {len(v)} items, must be 1..{max_items} (absent means none; empty is invalid)")
    for i, x in enumerate(v):
        if type(x) is not str:
            raise Reject(f"{name}[{i}]: expected tstr, got {type(x).__name__}")
    raw = [x.encode("utf-8") for x in v]
    for i in range(1, len(raw)):
        if not raw[i - 1] < raw[i]:
            raise Reject(f"{name}: set not in strictly ascending byte order at item {i}")
    return v


def check_stream(s: Any) -> None:
    name = "body.1 (stream)"
    _tstr(s, name, 1, STREAM_LEN_MAX)
    tokens = s.split(".")
    if len(tokens) > STREAM_TOKENS_MAX:
        raise Reject(f"{name}: {len(tokens)} tokens, at most {STREAM_TOKENS_MAX}")
    for t in tokens:
        if not STREAM_TOKEN_RE.fullmatch(t):
            raise Reject(f"{name}: token {t!r} is not 1*(ALPHA / DIGIT / '_' / '-')")
        if len(t) > STREAM_TOKEN_LEN_MAX:
            raise Reject(f"{name}: token of {len(t)} bytes, at most {STREAM_TOKEN_LEN_MAX}")


def check_security(v: Any) -> None:
    n = "body.6 (security)"
    sec = _map(v, n, known={0, 1, 2, 3, 4, 5}, required={0, 1, 2, 5})
    _no_control(_tstr(sec[0], f"{n}.0 (tenant)", 1, NAME_LEN_MAX), f"{n}.0 (tenant)")
    _no_control(_tstr(sec[1], f"{n}.1 (principal)", 1, NAME_LEN_MAX), f"{n}.1 (principal)")
    _no_control(_tstr(sec[2], f"{n}.2 (classification)", 1, CLASSIFICATION_LEN_MAX), f"{n}.2 (classification)")
    if 3 in sec:
        for j in _tstr_set(sec[3], f"{n}.3 (residency)", RESIDENCY_LEN_MAX):
            if not JURISDICTION_RE.fullmatch(j):
                raise Reject(f"{n}.3 (residency): {j!r} does not match [A-Z][A-Z0-9-]+")
            if len(j.encode()) > JURISDICTION_LEN_MAX:
                raise Reject(f"{n}.3 (residency): {j!r} longer than {JURISDICTION_LEN_MAX} bytes")
    if 4 in sec:
        for sc in _tstr_set(sec[4], f"{n}.4 (scopes)", SCOPES_LEN_MAX):
            _tstr(sc, f"{n}.4 (scopes)", 1, SCOPE_LEN_MAX)
            _ascii_range(sc, f"{n}.4 (scopes)", 0x21, 0x7E)
    _uint(sec[5], f"{n}.5 (policy_epoch)")


def check_trace(v: Any) -> None:
    n = "body.10 (trace)"
    tr = _map(v, n, known={0, 1}, required={0})
    tp = _tstr(tr[0], f"{n}.0 (traceparent)", TRACEPARENT_LEN, TRACEPARENT_LEN)
    m = TRACEPARENT_RE.fullmatch(tp)
    if not m:
        raise Reject(f"{n}.0 (traceparent): {tp!r} is not 00-<32 hex>-<16 hex>-<2 hex> in lowercase")
    if m.group(1) == "0" * 32:
        raise Reject(f"{n}.0 (traceparent): trace id is all zeros")
    if m.group(2) == "0" * 16:
        raise Reject(f"{n}.0 (traceparent): parent id is all zeros")
    if 1 in tr:
        _ascii_range(_tstr(tr[1], f"{n}.1 (tracestate)", 1, TRACESTATE_LEN_MAX), f"{n}.1 (tracestate)", 0x20, 0x7E)


def check_sealed(v: Any) -> dict:
    n = "body.9 (sealed payload)"
    sp = _map(v, n, known={0, 1, 2}, required={0, 1, 2})
    kid = _tstr(sp[0], f"{n}.0 (key_id)", 1, KEY_ID_LEN_MAX)
    if not KEY_ID_RE.fullmatch(kid):
        raise Reject(f"{n}.0 (key_id): {kid!r} has characters outside A-Z a-z 0-9 . _ : / -")
    _bstr(sp[1], f"{n}.1 (nonce)", NONCE_LEN, NONCE_LEN)
    _bstr(sp[2], f"{n}.2 (ciphertext)", TAG_LEN, PAYLOAD_LEN_MAX + TAG_LEN)
    return sp


def check_body_schema(body: Any) -> None:
    if type(body) is not dict:
        raise Reject(f"body: expected map, got {type(body).__name__}")
    # Key 0 first: the version decides which schema applies (section 10).
    if 0 not in body:
        raise Reject("body: missing required field 0 (version)")
    ver = _uint(body[0], "body.0 (version)")
    if ver != ENVELOPE_VERSION:
        raise Reject(f"body.0 (version): unsupported version {ver}, this checker reads {ENVELOPE_VERSION}")
    _map(body, "body", known=set(range(11)), required={0, 1, 3, 4, 5, 6, 7})
    check_stream(body[1])
    if 2 in body:
        _bstr(body[2], "body.2 (key)", 1, KEY_LEN_MAX)
    _bstr(body[3], "body.3 (origin)", ORIGIN_LEN, ORIGIN_LEN)
    if _uint(body[4], "body.4 (seq)") < 1:
        raise Reject("body.4 (seq): must be >= 1")
    _uint(body[5], "body.5 (hlc)")
    check_security(body[6])
    ct = _tstr(body[7], "body.7 (content_type)", 1, CONTENT_TYPE_LEN_MAX)
    _ascii_range(ct, "body.7 (content_type)", 0x20, 0x7E)
    if (8 in body) == (9 in body):
        raise Reject("body: exactly one of keys 8 (clear payload) and 9 (sealed payload) must be present")
    if 8 in body:
        _bstr(body[8], "body.8 (payload)", 0, PAYLOAD_LEN_MAX)
    else:
        check_sealed(body[9])
    if 10 in body:
        check_trace(body[10])


# --- the whole check ----------------------------------------------------------------


class Result:
    def __init__(self) -> None:
        self.accepted = False
        self.reason: str | None = None
        self.body_bytes: bytes | None = None
        self.body: Any = None
        self.signature: bytes | None = None
        self.signed_bytes: bytes | None = None
        self.event_id: bytes | None = None
        self.aad: bytes | None = None
        self.plaintext: bytes | None = None


def check_envelope(envelope: bytes, keyring: dict[str, bytes]) -> Result:
    """Decode, validate and verify one envelope. Never raises; see .accepted / .reason."""
    r = Result()
    try:
        _check(envelope, keyring, r)
        r.accepted = True
    except Reject as e:
        r.reason = str(e)
    return r


def _check(envelope: bytes, keyring: dict[str, bytes], r: Result) -> None:
    if len(envelope) > EVENT_LEN_MAX:
        raise Reject(f"envelope: {len(envelope)} bytes, more than EVENT_LEN_MAX {EVENT_LEN_MAX}")
    outer = cbor_decode(envelope, "envelope")
    if type(outer) is not list or len(outer) != 2:
        raise Reject("envelope: not a CBOR array of exactly 2 items")
    body_bytes, signature = outer
    if type(body_bytes) is not bytes:
        raise Reject(f"envelope[0] (body): expected bstr, got {type(body_bytes).__name__}")
    if type(signature) is not bytes:
        raise Reject(f"envelope[1] (signature): expected bstr, got {type(signature).__name__}")
    # Values the vector file also lists; record them even if a later check rejects.
    r.body_bytes, r.signature = body_bytes, signature
    r.signed_bytes = SIGNING_CONTEXT + body_bytes
    r.event_id = hashlib.sha256(r.signed_bytes).digest()
    if len(signature) != SIGNATURE_LEN:
        raise Reject(f"envelope[1] (signature): {len(signature)} bytes, must be {SIGNATURE_LEN}")
    require_canonical(envelope, outer, "envelope")

    body_offset = 1 + len(_head(2, len(body_bytes)))  # where the body starts inside the envelope
    body = cbor_decode(body_bytes, "body")
    r.body = body
    check_body_schema(body)
    require_canonical(body_bytes, body, "body", base=body_offset)
    # Cross-check the hand-written encoder against cbor2's own canonical mode; for the
    # types allowed here (uint keys, uint/bstr/tstr/array/map values) they must agree.
    if cbor2.dumps(outer, canonical=True) != envelope or cbor2.dumps(body, canonical=True) != body_bytes:
        raise Reject("internal: cbor2 canonical=True disagrees with this checker's canonical encoder")

    # Section 8: strict Ed25519 over the signed bytes (libsodium also refuses small-order
    # keys and R, non-canonical R, and s >= L).
    try:
        nacl.signing.VerifyKey(body[3]).verify(r.signed_bytes, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError) as e:
        raise Reject(f"signature: does not verify against the origin key over the signed bytes ({e})") from None

    if 9 in body:
        sealed = body[9]
        r.aad = canon({k: v for k, v in body.items() if k != 9}, "aad")
        key = keyring.get(sealed[0])
        if key is None:
            raise Reject(f"body.9 (sealed payload): no key {sealed[0]!r} in the key ring, cannot open")
        try:
            r.plaintext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed[2], r.aad, sealed[1], key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as e:
            raise Reject(f"body.9 (sealed payload): XChaCha20-Poly1305 open failed ({e})") from None


# --- vectors ----------------------------------------------------------------------------------


def _hex(vec: dict, field: str) -> bytes:
    v = vec.get(field)
    if not isinstance(v, str):
        raise ValueError(f"vector field {field!r} missing or not a string")
    return bytes.fromhex(v)


def check_vector(vec: dict) -> tuple[bool, str]:
    """Returns (passed, detail)."""
    mismatches: list[str] = []
    try:
        envelope = _hex(vec, "envelope_hex")
        valid = vec["valid"]
        if type(valid) is not bool:
            return False, "vector field 'valid' is not a boolean"
        keyring: dict[str, bytes] = {}
        if "key_hex" in vec:
            keyring[vec["key_id"]] = _hex(vec, "key_hex")
        r = check_envelope(envelope, keyring)

        def cmp(name: str, got: bytes | None, field: str) -> None:
            if field not in vec:
                if valid:
                    mismatches.append(f"vector lacks {field}")
                return
            if got is None:
                if valid:
                    mismatches.append(f"{name} not computed")
                return  # invalid vector rejected before this value exists
            want = _hex(vec, field)
            if got != want:
                mismatches.append(f"{name} {got.hex()} != {field} {want.hex()}")

        # Steps 2-3: these are byte-level facts the file states for every vector.
        cmp("signed bytes", r.signed_bytes, "signed_bytes_hex")
        cmp("event id", r.event_id, "id_hex")
        cmp("signature", r.signature, "signature_hex")
        origin = r.body.get(3) if type(r.body) is dict and type(r.body.get(3)) is bytes else None
        cmp("origin", origin, "public_key_hex")
        sealed_vec = "key_hex" in vec
        if sealed_vec:
            sealed = r.body.get(9) if type(r.body) is dict and type(r.body.get(9)) is dict else None
            cmp("associated data", r.aad, "aad_hex")
            cmp("nonce", sealed.get(1) if sealed else None, "nonce_hex")
            cmp("plaintext", r.plaintext, "plaintext_hex")
            kid = sealed.get(0) if sealed else None
            if kid != vec.get("key_id") and (valid or kid is not None):
                mismatches.append(f"body key_id {kid!r} != key_id {vec.get('key_id')!r}")
        elif valid and type(r.body) is dict and 9 in r.body:
            mismatches.append("sealed payload but the vector has no key_hex")
        # The hex in the file must be what the envelope carries.
        if r.signed_bytes is not None and r.signed_bytes[len(SIGNING_CONTEXT):] not in envelope:
            mismatches.append("body is not inside the envelope bytes")
    except (KeyError, ValueError) as e:
        return False, f"malformed vector: {e}"

    if r.accepted != valid:
        verdict = "accepted" if r.accepted else f"rejected ({r.reason})"
        return False, f"{verdict}, but the vector says valid={valid}" + (f"; also {'; '.join(mismatches)}" if mismatches else "")
    if mismatches:
        return False, "; ".join(mismatches)
    if valid:
        extra = ", sealed payload opened" if sealed_vec else ""
        return True, f"accepted: canonical, schema ok, signed bytes/id/origin/signature match, Ed25519 verifies{extra}"
    return True, f"rejected as expected by: {r.reason}"


# --- negative self-checks -----------------------------------------------------------------------


def _value_offset(m: dict, key: int) -> int:
    """Offset of the encoding of m[key] inside canon(m) (m is a canonical uint-keyed map)."""
    off = len(_head(5, len(m)))
    for k in sorted(m):
        off += len(canon(k))
        if k == key:
            return off
        off += len(canon(m[k]))
    raise KeyError(key)


def payload_byte_offset(envelope: bytes, body: dict) -> int:
    """Envelope offset of a byte in the middle of the payload (clear payload or ciphertext)."""
    body_bytes = cbor2.loads(envelope)[0]
    base = 1 + len(_head(2, len(body_bytes)))
    if 8 in body and len(body[8]) > 0:
        data_off = _value_offset(body, 8) + len(_head(2, len(body[8])))
        length = len(body[8])
    elif 9 in body:
        sealed = body[9]
        ct_off = _value_offset(body, 9) + _value_offset(sealed, 2)
        data_off = ct_off + len(_head(2, len(sealed[2])))
        length = len(sealed[2])
    else:
        raise ValueError("empty clear payload, nothing to flip")
    off = base + data_off + length // 2
    assert envelope[base:base + len(body_bytes)] == body_bytes
    return off


def self_checks(vectors: list[dict]) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    first = next((v for v in vectors if v.get("valid") is True), None)
    if first is None:
        return [(False, "self-check: no valid vector to mutate")]
    env = bytes.fromhex(first["envelope_hex"])
    keyring = {first["key_id"]: bytes.fromhex(first["key_hex"])} if "key_hex" in first else {}
    base = check_envelope(env, keyring)
    out.append((base.accepted, f"self-check: unmodified first valid vector is accepted"
                + ("" if base.accepted else f" -- but it was rejected: {base.reason}")))
    if not base.accepted:
        return out

    def mutated(name: str, data: bytes) -> None:
        if data == env:
            out.append((False, f"self-check: {name}: mutation did not change the bytes"))
            return
        r = check_envelope(data, keyring)
        if r.accepted:
            out.append((False, f"self-check: {name}: ACCEPTED, the checker cannot fail"))
        else:
            out.append((True, f"self-check: {name}: rejected by: {r.reason}"))

    off = payload_byte_offset(env, base.body)
    b = bytearray(env)
    b[off] ^= 0x01
    mutated(f"payload byte at envelope offset {off} flipped", bytes(b))

    sig_off = len(env) - SIGNATURE_LEN  # signature is the last item of the canonical envelope
    assert env[sig_off:] == base.signature
    b = bytearray(env)
    b[sig_off + 5] ^= 0x01
    mutated(f"signature byte at envelope offset {sig_off + 5} flipped", bytes(b))

    mutated("one trailing byte appended to the envelope", env + b"\x00")
    return out


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "docs" / "wire-vectors.json"
    try:
        vectors = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"FAIL cannot read {path}: {e}")
        return 1
    if not isinstance(vectors, list):
        print(f"FAIL {path}: top level is not a JSON array")
        return 1

    failures = 0
    n_valid = n_invalid = 0
    for i, vec in enumerate(vectors):
        desc = vec.get("description", f"vector #{i}") if isinstance(vec, dict) else f"vector #{i}"
        if not isinstance(vec, dict):
            ok, detail = False, "not a JSON object"
        else:
            ok, detail = check_vector(vec)
            n_valid += vec.get("valid") is True
            n_invalid += vec.get("valid") is False
        if ok:
            print(f"ok   {desc}  [{detail}]")
        else:
            failures += 1
            print(f"FAIL {desc}: {detail}")

    too_few = len(vectors) < MIN_VECTORS
    if too_few:
        print(f"FAIL only {len(vectors)} vectors in {path}, at least {MIN_VECTORS} required")

    self_failures = 0
    results = self_checks(vectors)
    for ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {detail}")
        self_failures += not ok

    print()
    print(f"{len(vectors)} vectors ({n_valid} valid, {n_invalid} invalid): "
          f"{len(vectors) - failures} ok, {failures} failed; "
          f"self-checks: {len(results) - self_failures}/{len(results)} ok")
    if failures or self_failures or too_few:
        print("RESULT: FAIL")
        return 1
    print("RESULT: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
