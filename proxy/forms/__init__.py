"""Multipart uploads streamed through the proxy: parsed as they arrive, re-encoded for the
upstream, held (in memory, then in an unlinked temporary file) only as long as needed.

    ClientBody   the request body off the socket: size limit, stall timeout, disconnects
    FormParser   python-multipart's streaming parser, turned into part events
    encoding     the multipart body we send: a boundary of ours, parts re-encoded
    Spool        held bytes: memory up to a small threshold, then a temporary file
    Upload       the whole story of one upload (README "Uploads")
"""

from proxy.forms.body import ClientBody
from proxy.forms.parser import PART_END, FormParser, PartStart, boundary_of
from proxy.forms.spool import Spool
from proxy.forms.upload import Upload

__all__ = ["PART_END", "ClientBody", "FormParser", "PartStart", "Spool", "Upload", "boundary_of"]
