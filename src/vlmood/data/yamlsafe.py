"""One YAML loader for every YAML file or value vlmood reads from a user.

PyYAML's ``safe_load`` builds plain data only, but it expands aliases: a 1 KB "billion laughs"
document (anchors referring to anchors) costs seconds and hundreds of MB per nesting level. This
loader refuses aliases (``*name``) outright and bounds the input size; benchmark files and CLI
values never need them.
"""

from __future__ import annotations

from typing import Any

import yaml

from vlmood.data.base import DataError

MAX_YAML_BYTES = 1 << 20  # 1 MiB: a benchmark definition is a few KB


class NoAliasSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises on alias events (``*name``)."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed; write the value out", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml(text: str, origin: str = "<yaml>", max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse ``text`` with :class:`NoAliasSafeLoader`; DataError (naming ``origin``) on bad YAML,
    an alias, a tag that safe YAML does not know, or input over ``max_bytes``."""
    if len(text) > max_bytes:
        raise DataError(f"{origin}: YAML input is {len(text)} characters, over the {max_bytes} limit")
    try:
        return yaml.load(text, Loader=NoAliasSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise DataError(f"{origin}: invalid YAML: {' '.join(str(e).split())}") from e
