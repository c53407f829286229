"""The API's JSON body parser: DRF's, answering a body nested too deeply with a 400.

json's C scanner recurses once per array/object level. py_ecc (imported by eth_account)
raises the interpreter's recursion limit to 100,000 for the whole process, and at that depth a
worker thread's C stack runs out first: the process dies (SIGSEGV) instead of raising.
`EscrowConfig.ready` puts the limit back, so a deep body raises RecursionError, which DRF's
parser does not catch (it would be a 500). The body's size is Django's
DATA_UPLOAD_MAX_MEMORY_SIZE (DRF reads JSON through request.body), answered with a 413 by
escrow.exceptions.
"""
from __future__ import annotations

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class LimitedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
