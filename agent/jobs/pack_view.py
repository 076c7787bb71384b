"""What the bench display shows: the flow's state as a small JSON-safe dict, in words.

``message`` is one sentence or two for the packer: what just happened (an accepted item,
a rejection and its reason) and what to do next in this state.
"""

from __future__ import annotations

from typing import Any

from agent.jobs.pack_steps import PackState, Steps
from agent.outbox import iso_time


def next_step(flow: Steps) -> str:
    """What the packer should do now, in words."""
    c = flow.config.controls
    s = flow.returns.session if flow.returns else flow.session
    state = flow.state
    if state == PackState.LOGGED_OUT:
        return "scan your badge to log in"
    if state == PackState.IDLE:
        return "scan an order, pick list or waybill"
    if state == PackState.LOOKING_UP:
        return f"looking up {flow.pending_code}, please wait"
    if state == PackState.INTERCEPTED:
        return f"STOP: put this parcel aside and scan set-aside ({c.set_aside})"
    if state == PackState.PACKING and s is not None:
        if flow.pending_serial is not None:
            return f"scan the serial number of {flow.pending_serial.label}"
        if s.all_packed():
            boxes = ", ".join(b.name or b.code for b in s.packaging().values())
            return f"every item is in: scan the box ({boxes})"
        done = sum(p.packed for p in s.lines)
        total = sum(p.line.quantity for p in s.lines)
        return f"scan the next item ({done} of {total} scanned)"
    if state == PackState.WEIGHING:
        return "put the parcel on the scale"
    if state == PackState.WEIGHT_MISMATCH:
        if flow.supervisor is not None:
            return f"supervisor {flow.supervisor}: scan an override reason code"
        return (f"check the items, then take the parcel off the scale and put it back (or "
                f"scan reweigh, {c.reweigh}); a supervisor may override with a badge and a "
                f"reason code")
    if state == PackState.LABELLING:
        return f"printing the labels (scan reprint, {c.reprint}, if one fails)"
    if state == PackState.VERIFY_LABEL:
        return "stick the waybill label on the box and scan it"
    if state == PackState.RETURNS:
        return f"returns: scan the returned parcel's waybill ({c.returns} to leave returns)"
    if flow.returns is not None and flow.returns.pending is not None:
        return (f"classify it: resellable ({c.resellable}), damaged ({c.damaged}) or wrong "
                f"item ({c.wrong_item})")
    return f"scan what came back, weigh and photograph it, then scan done ({c.done})"


def bench_view(flow: Steps) -> dict[str, Any]:
    """The snapshot without ``changed_at``: compared before and after every event."""
    s = flow.returns.session if flow.returns else flow.session
    step = next_step(flow)
    message = f"{flow.news}. {step[:1].upper()}{step[1:]}" if flow.news else (
        step[:1].upper() + step[1:])
    view: dict[str, Any] = {
        "state": flow.state.value,
        "mode": flow.mode,
        "packer": flow.packer,
        "message": message,
        "order_ids": list(s.order_ids) if s else [],
        "note": s.note if s else "",
        "flags": s.flags if s else [],
        "lines": [p.view() for p in s.lines] if s and not flow.returns else [],
        "box": None,
        "expected_weight_g": None,
        "tolerance_g": None,
        "last_weight_g": _g(flow.last_weight_g),
        "stable_weight_g": _g(s.stable_weight_g) if s else None,
        "verdict": flow.verdict,
        "waybill": s.waybill if s else None,
        "awaiting": _awaiting(flow),
        "last_rejection": flow.last_rejection,
        "last_parcel": flow.last_parcel,
        "state_since": iso_time(flow.state_since) if flow.state_since else None,
    }
    if flow.session is not None and not flow.returns:
        expected, tolerance = flow._expected()
        view["expected_weight_g"], view["tolerance_g"] = _g(expected), _g(tolerance)
        box = flow.session.box
        view["box"] = None if box is None else {"code": box.code, "name": box.name,
                                                "tare_g": box.tare_g}
    if flow.returns is not None:
        view["returns"] = flow.returns.lines_view()
    if flow.intercept is not None:
        view["intercept"] = flow.intercept
    return view


def _awaiting(flow: Steps) -> str | None:
    if flow.pending_serial is not None:
        return "serial"
    if flow.supervisor is not None:
        return "reason_code"
    if flow.returns is not None and flow.returns.pending is not None:
        return "classification"
    return None


def _g(grams: float | None) -> float | None:
    return None if grams is None else round(grams, 1)

