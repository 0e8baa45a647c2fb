"""schemathesis hooks for tests/test_openapi_contract.py (loaded with ``SCHEMATHESIS_HOOKS=tests.contract_hooks``).

The one format the document names that JSON Schema lacks, ``mailbox``
(``'a@b.example'`` or ``'Name <a@b.example>'``), drawn from valid mailboxes:
ASCII and internationalised domains, dot-atom local parts, display names.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from mailsvc.web.schemas import MAILBOX_FORMAT

_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True).filter(lambda s: "--" not in s)
_domain = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(_label, min_size=1, max_size=2),
    st.sampled_from(["com", "org", "example", "de", "bücher.example"]),
)
_local = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,12}(?:\.[A-Za-z0-9_-]{1,8})?", fullmatch=True)
_addr = st.builds("{}@{}".format, _local, _domain)
_name = st.text(st.characters(categories=["L", "N"], include_characters=" .-"), max_size=20)
MAILBOXES = st.one_of(_addr, st.builds("{} <{}>".format, _name.map(str.strip).filter(bool), _addr))

schemathesis.openapi.format(MAILBOX_FORMAT, MAILBOXES)
