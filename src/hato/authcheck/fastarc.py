"""dkimpy's ARC validator with the work per message bounded by what RFC 8617 §5.2 asks for.

dkimpy (1.1.8) validates a chain of N sets by, for each instance, checking its
ARC-Message-Signature and its ARC-Seal. `FastARC` keeps its verdicts and changes where the
time goes:
- the ARC fields are found and canonicalized once (dkimpy canonicalized every field of the
  header section to find them, then again for every signature: `FastVerify` canonicalizes
  only the fields a signature covers, each once per message);
- the ARC-Message-Signature of instance i is found among the ARC-Message-Signature fields,
  not by looking at every field of the header section again for each instance;
- only the newest ARC-Message-Signature is verified (§5.2 step 5: "AMS[N]"). dkimpy
  verified all N, hashing the body again for each (one canonicalization per c=/l= a
  stranger chose), yet its verdict reads only the newest (`ARC.verify`); an older one is
  reported invalid, as when its key was not fetched (arc.py fetches only the newest's).
Every tag check dkimpy makes of every set stays, in dkimpy's order, so a set it refused as
malformed is refused the same.

Imports: dkimpy, `FastVerify`. CPU only; runs in an Offload like the rest of dkimpy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import dkim  # type: ignore[import-untyped]
from dkim.canonicalization import Relaxed  # type: ignore[import-untyped]
from dkim.util import InvalidTagValueList, parse_tag_value  # type: ignore[import-untyped]

from hato.authcheck.fastverify import FastVerify

_AAR, _AMS, _SEAL = dkim.ARC.ARC_HEADERS[2], dkim.ARC.ARC_HEADERS[1], dkim.ARC.ARC_HEADERS[0]

ArcHeaders = list[tuple[int, tuple[bytes, bytes]]]


class FastARC(FastVerify, dkim.ARC):  # type: ignore[misc]
    """dkimpy's ARC verifier with `FastVerify`, step by step dkimpy 1.1's `ARC` otherwise."""

    headers: list[Any]
    logger: Any

    def sorted_arc_headers(self) -> tuple[int, ArcHeaders]:
        """dkimpy's: the ARC fields relaxed-canonicalized with their i=, sorted by instance,
        name and value, newest first; only the ARC fields are canonicalized."""
        arc = [f for f in self.headers if f[0].lower().rstrip() in dkim.ARC.ARC_HEADERS]
        headers: ArcHeaders = []
        for name, value in Relaxed.canonicalize_headers(arc):
            match = dkim.ARC.INSTANCE_RE.search(value)
            if match is not None:
                try:
                    headers.append((int(match.group(1)), (name, value)))
                except ValueError:  # as dkimpy: more digits than int() takes is no instance
                    continue
        if not headers:
            return 0, []
        headers.sort(key=lambda a: [a[0], a[1][0].lower(), a[1][1].lower()])
        headers.reverse()  # dkimpy's order, equal keys included
        return headers[0][0], headers

    def verify_instance(
        self,
        arc_headers_w_instance: ArcHeaders,
        instance: int,
        dnsfunc: Callable[..., bytes] | None = None,
    ) -> dict[str, Any]:
        if instance == 0 or not arc_headers_w_instance:
            raise dkim.ParameterError(f"request to verify instance {instance} not present")
        arc_headers = [h for i, h in arc_headers_w_instance if i <= instance]
        values = _set_values(arc_headers_w_instance, instance)
        aar_value, ams_value, as_value = values
        output: dict[str, Any] = {"instance": instance, "aar-value": aar_value}

        # RFC 8617 §4.1.2: the ARC-Message-Signature, a DKIM signature with i= and no v=.
        sig = _tags(ams_value)
        dkim.validate_signature_fields(sig, [b"i", b"a", b"b", b"bh", b"d", b"h", b"s"], True)
        output["ams-domain"] = sig[b"d"]
        output["ams-selector"] = sig[b"s"]
        include_headers = [x.lower() for x in re.split(rb"\s*:\s*", sig[b"h"])]
        if _SEAL in include_headers:
            raise dkim.ParameterError("The Arc-Message-Signature MUST NOT sign ARC-Seal")
        # The raw field (dkimpy's: the first AMS whose value holds " i=N;"), as signed.
        wanted = b" i=" + sig[b"i"] + b";"
        candidates = [(x, y) for x, y in self._ams_fields() if wanted in y.lower()]
        raw_ams_header = candidates[0]  # an IndexError when none, as dkimpy's
        if b"c" not in sig:
            sig[b"c"] = b"relaxed/relaxed"
        ams_valid = False
        if instance == arc_headers_w_instance[0][0]:  # the newest: sorted_arc_headers' order
            # RFC 8617 §5.2 step 5: the newest AMS is validated; dkimpy's verdict reads no
            # other (older ones are step 6's optional "oldest-pass", not computed here).
            try:
                ams_valid = self.verify_sig(sig, include_headers, raw_ams_header, dnsfunc)
            except dkim.DKIMException as error:
                self.logger.error("%s", error)
        output["ams-valid"] = ams_valid

        # RFC 8617 §4.1.3: the ARC-Seal, over the ARC sets 1..i (§5.1.1 order), no h=.
        sig = _tags(as_value)
        dkim.validate_signature_fields(sig, [b"i", b"a", b"b", b"cv", b"d", b"s"], True)
        if b"h" in sig:
            raise dkim.ValidationError("h= tag not permitted in ARC-Seal header field")
        output["as-domain"] = sig[b"d"]
        output["as-selector"] = sig[b"s"]
        output["cv"] = sig[b"cv"]
        as_include_headers = [x[0].lower() for x in reversed(arc_headers)]
        if b"c" not in sig:
            sig[b"c"] = b"relaxed/relaxed"
        try:
            as_valid = self.verify_sig(
                sig, as_include_headers[:-1], (b"ARC-Seal", b" " + as_value), dnsfunc
            )
        except dkim.DKIMException as error:
            self.logger.error("%s", error)
            as_valid = False
        output["as-valid"] = as_valid
        return output

    _ams_for: list[Any] | None = None
    _ams: list[tuple[bytes, bytes]]

    def _ams_fields(self) -> list[tuple[bytes, bytes]]:
        """The ARC-Message-Signature fields as they came, top to bottom (once per message)."""
        if self._ams_for is not self.headers:
            self._ams_for = self.headers
            self._ams = [(x, y) for x, y in self.headers if x.lower() == _AMS]
        return self._ams


def _set_values(headers: ArcHeaders, instance: int) -> tuple[bytes, bytes, bytes]:
    """The AAR, AMS and AS values of `instance`, refused as dkimpy refuses a set that has
    one of them twice or misses one (RFC 8617 §5.2 step 3.1)."""
    found: dict[bytes, bytes] = {}
    for i, (name, value) in headers:
        if i != instance:
            continue
        kind = name.lower()
        if kind in found:
            title = {_AAR: "ARC-Authentication-Results", _AMS: "ARC-Message-Signature"}
            raise dkim.MessageFormatError(
                f"Duplicate {title.get(kind, 'ARC-Seal')} for instance {instance}"
            )
        found[kind] = value
    if len(found) != 3:
        raise dkim.MessageFormatError(f"Incomplete ARC set for instance {instance}")
    return found[_AAR], found[_AMS], found[_SEAL]


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return dict(parse_tag_value(value))
    except InvalidTagValueList as error:
        raise dkim.MessageFormatError(error) from None
