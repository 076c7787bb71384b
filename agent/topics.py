"""The MQTT topic namespace of one bench: ``{topic_root}/{site}/{bench}/...``.

``topic_root`` defaults to ``benchagent/v1``; the ``v1`` level changes only with an
incompatible change of the API (see ``docs/mqtt-api.md``).
"""

from __future__ import annotations


class Topics:
    """Every topic a bench publishes to or subscribes to."""

    def __init__(self, root: str, site: str, bench: str) -> None:
        self.prefix = f"{root}/{site}/{bench}"
        self.status = f"{self.prefix}/status"
        self.state = f"{self.prefix}/state"
        """The packing bench's state for displays (retained, at every change)."""
        self.commands = f"{self.prefix}/cmd/+"
        self.reply = f"{self.prefix}/reply"
        self.echo = f"{self.prefix}/diag/echo"
        """``mqtt.check`` publishes here and reads it back: a round trip through the broker."""

    def event(self, kind: str) -> str:
        return f"{self.prefix}/events/{kind}"

    def command_name(self, topic: str) -> str | None:
        """``cmd/NAME`` -> ``NAME``; ``None`` for a topic outside the command namespace."""
        head = f"{self.prefix}/cmd/"
        if not topic.startswith(head) or "/" in topic[len(head):]:
            return None
        return topic[len(head):] or None

    def is_reply_topic(self, topic: str) -> bool:
        """Replies may only go under the bench's own ``reply`` level (the broker ACL's)."""
        if "+" in topic or "#" in topic or "\0" in topic:
            return False
        return topic == self.reply or topic.startswith(self.reply + "/")
