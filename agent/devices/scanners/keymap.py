"""Keyboard layouts of wedge scanners, and the decoder of their key presses.

A keyboard-wedge scanner types each character of a barcode as the key presses a person
would make on a keyboard of the country it is set to. Linux key codes name the physical
key by its US label, so a scanner set to German sends ``KEY_Y`` for ``z`` and
AltGr+``KEY_Q`` for ``@``, and one set to French sends Shift+``KEY_1`` for ``1``.
:data:`LAYOUTS` holds the US, German (QWERTZ) and French (AZERTY) layouts as the
scanners' country tables use them, which are the Windows layouts (``kbdus``, ``kbdgr``,
``kbdfr``):

* Caps Lock inverts Shift on letter keys only (Windows also shifts the de/fr digit row;
  Linux and this decoder do not, and scanners do not rely on it).
* AltGr is Right Alt, or Left Ctrl + Left Alt (how some scanners send it).
* Dead keys (de: circumflex and grave; fr: tilde, grave and the circumflex key) are
  followed by Space to give the accent itself; a vowel after one gives the accented
  letter. (fr AltGr+9 is a plain ``^``.)
* Control characters are Ctrl + a key. Ctrl+letter gives 0x01-0x1A. GS (0x1D, the FNC1
  separator of GS1 barcodes) is Ctrl + the key right of P on all three layouts: ``]``
  (us), ``+`` (de), ``$`` (fr); ESC, FS, RS and US follow the Windows tables below.
* Alt + keypad digits (Windows "Alt codes": ``Alt+029`` is GS) give the character with
  that code, which some scanners use to be independent of the layout.
* Keypad keys are digits whatever the Num Lock state: a scanner sends them as digits.

:class:`KeyDecoder` turns ``evdev.InputEvent`` s into complete reads. :func:`keystrokes`
is the inverse (text to key presses), used by the scanner simulator.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache

from evdev import InputEvent
from evdev import ecodes as e

from agent.devices.scanners import Discarded, RawScan, ReadOutcome

ESC, FS, GS, RS, US = "\x1b", "\x1c", "\x1d", "\x1e", "\x1f"


@dataclass(frozen=True, slots=True)
class Key:
    """What one key gives: plain, with Shift, with AltGr ("" for nothing); ``dead`` levels."""

    plain: str = ""
    shift: str = ""
    altgr: str = ""
    dead: frozenset[str] = frozenset()
    """The levels (``plain``, ``shift``, ``altgr``) at which this is a dead key."""

    @property
    def letter(self) -> bool:
        """Caps Lock applies: a letter whose Shift level is its capital."""
        return self.plain.isalpha() and self.shift == self.plain.upper() != self.plain


@dataclass(frozen=True, slots=True)
class Layout:
    """A keyboard layout: key code -> :class:`Key`, and the Ctrl combinations."""

    name: str
    keys: dict[int, Key]
    controls: dict[tuple[int, bool], str] = field(default_factory=dict)
    """(key code, Shift held) with Ctrl -> control character, besides Ctrl+letter."""


_NUMBER_ROW = (e.KEY_GRAVE, e.KEY_1, e.KEY_2, e.KEY_3, e.KEY_4, e.KEY_5, e.KEY_6, e.KEY_7,
               e.KEY_8, e.KEY_9, e.KEY_0, e.KEY_MINUS, e.KEY_EQUAL)
_TOP_ROW = (e.KEY_Q, e.KEY_W, e.KEY_E, e.KEY_R, e.KEY_T, e.KEY_Y, e.KEY_U, e.KEY_I, e.KEY_O,
            e.KEY_P, e.KEY_LEFTBRACE, e.KEY_RIGHTBRACE)
_HOME_ROW = (e.KEY_A, e.KEY_S, e.KEY_D, e.KEY_F, e.KEY_G, e.KEY_H, e.KEY_J, e.KEY_K, e.KEY_L,
             e.KEY_SEMICOLON, e.KEY_APOSTROPHE, e.KEY_BACKSLASH)
_BOTTOM_ROW = (e.KEY_102ND, e.KEY_Z, e.KEY_X, e.KEY_C, e.KEY_V, e.KEY_B, e.KEY_N, e.KEY_M,
               e.KEY_COMMA, e.KEY_DOT, e.KEY_SLASH)
_KEYPAD = {e.KEY_KP0: "0", e.KEY_KP1: "1", e.KEY_KP2: "2", e.KEY_KP3: "3", e.KEY_KP4: "4",
           e.KEY_KP5: "5", e.KEY_KP6: "6", e.KEY_KP7: "7", e.KEY_KP8: "8", e.KEY_KP9: "9",
           e.KEY_KPSLASH: "/", e.KEY_KPASTERISK: "*", e.KEY_KPMINUS: "-", e.KEY_KPPLUS: "+"}
_KEYPAD_DIGITS = {code: char for code, char in _KEYPAD.items() if char.isdigit()}


def _layout(name: str, rows: tuple[str, str, str, str], *, dead: dict[int, str],
            controls: dict[tuple[int, bool], str], keypad_decimal: str) -> Layout:
    """Build a layout from four rows of space-separated keys, each ``plain shift altgr``.

    ``dead`` marks dead levels per key with ``d`` in the same three positions.
    """
    keys: dict[int, Key] = {}
    for codes, row in zip((_NUMBER_ROW, _TOP_ROW, _HOME_ROW, _BOTTOM_ROW), rows, strict=True):
        for code, spec in zip(codes, row.split(" "), strict=True):
            levels = spec + "  "
            plain, shift, altgr = levels[0], levels[1], levels[2]
            marks = dead.get(code, "")
            keys[code] = Key(plain, shift.strip(), altgr.strip(), frozenset(
                level for level, mark in zip(("plain", "shift", "altgr"), marks, strict=False)
                if mark == "d"))
    keys[e.KEY_SPACE] = Key(" ", " ")
    keys.update({code: Key(char, char) for code, char in _KEYPAD.items()})
    keys[e.KEY_KPDOT] = Key(keypad_decimal, keypad_decimal)
    return Layout(name, keys, controls)


US_LAYOUT = _layout(
    "us",
    ("`~ 1! 2@ 3# 4$ 5% 6^ 7& 8* 9( 0) -_ =+",
     "qQ wW eE rR tT yY uU iI oO pP [{ ]}",
     "aA sS dD fF gG hH jJ kK lL ;: '\" \\|",
     "\\| zZ xX cC vV bB nN mM ,< .> /?"),
    dead={},
    controls={(e.KEY_LEFTBRACE, False): ESC, (e.KEY_BACKSLASH, False): FS,
              (e.KEY_102ND, False): FS, (e.KEY_RIGHTBRACE, False): GS,
              (e.KEY_6, True): RS, (e.KEY_MINUS, True): US},
    keypad_decimal=".",
)
DE_LAYOUT = _layout(
    "de",
    ("^° 1! 2\"² 3§³ 4$ 5% 6& 7/{ 8([ 9)] 0=} ß?\\ \u00b4`",
     "qQ@ wW eE€ rR tT zZ uU iI oO pP üÜ +*~",
     "aA sS dD fF gG hH jJ kK lL öÖ äÄ #'",
     "<>| yY xX cC vV bB nN mMµ ,; .: -_"),
    dead={e.KEY_GRAVE: "d  ", e.KEY_EQUAL: "dd "},
    controls={(e.KEY_LEFTBRACE, False): ESC, (e.KEY_BACKSLASH, False): FS,
              (e.KEY_RIGHTBRACE, False): GS, (e.KEY_6, True): RS, (e.KEY_SLASH, True): US},
    keypad_decimal=",",
)
FR_LAYOUT = _layout(
    "fr",
    ("² &1 é2~ \"3# '4{ (5[ -6| è7` _8\\ ç9^ à0@ )°] =+}",
     "aA zZ eE€ rR tT yY uU iI oO pP ^¨ $£¤",
     "qQ sS dD fF gG hH jJ kK lL mM ù% *µ",
     "<> wW xX cC vV bB nN ,? ;. :/ !§"),
    dead={e.KEY_2: "  d", e.KEY_7: "  d", e.KEY_LEFTBRACE: "dd "},
    controls={(e.KEY_LEFTBRACE, False): ESC, (e.KEY_5, True): ESC,
              (e.KEY_BACKSLASH, False): FS, (e.KEY_102ND, False): FS, (e.KEY_8, True): FS,
              (e.KEY_RIGHTBRACE, False): GS, (e.KEY_9, True): RS, (e.KEY_6, True): US},
    keypad_decimal=".",
)
LAYOUTS: dict[str, Layout] = {"us": US_LAYOUT, "de": DE_LAYOUT, "fr": FR_LAYOUT}

SHIFT_KEYS = frozenset({e.KEY_LEFTSHIFT, e.KEY_RIGHTSHIFT})
CTRL_KEYS = frozenset({e.KEY_LEFTCTRL, e.KEY_RIGHTCTRL})
MODIFIER_KEYS = SHIFT_KEYS | CTRL_KEYS | {e.KEY_LEFTALT, e.KEY_RIGHTALT, e.KEY_LEFTMETA,
                                          e.KEY_RIGHTMETA}
ENTER_KEYS = frozenset({e.KEY_ENTER, e.KEY_KPENTER})
IGNORED_KEYS = frozenset({e.KEY_NUMLOCK, e.KEY_SCROLLLOCK})


@dataclass(frozen=True, slots=True)
class Keystroke:
    """One key press with the modifiers held for it."""

    code: int
    shift: bool = False
    altgr: bool = False
    ctrl: bool = False


def keystrokes(text: str, layout: str) -> list[Keystroke]:
    """The key presses a scanner set to ``layout`` makes to type ``text``.

    Tab and CR/LF are the Tab and Enter keys. A dead-key character is the dead key and
    Space.

    Raises:
        ValueError: a character the layout cannot type (it names the character).
    """
    table = _typing_table(layout)
    strokes: list[Keystroke] = []
    for char in text:
        try:
            strokes += table[char]
        except KeyError:
            raise ValueError(f"{char!r} cannot be typed on the {layout} layout") from None
    return strokes


@cache
def _typing_table(name: str) -> dict[str, tuple[Keystroke, ...]]:
    layout = LAYOUTS[name]
    table: dict[str, tuple[Keystroke, ...]] = {}
    dead: dict[str, tuple[Keystroke, ...]] = {}
    for code, key in layout.keys.items():
        for level in ("plain", "shift", "altgr"):
            char = getattr(key, level)
            stroke = Keystroke(code, shift=level == "shift", altgr=level == "altgr")
            if not char:
                continue
            if level in key.dead:
                dead.setdefault(char, (stroke, Keystroke(e.KEY_SPACE)))
            else:
                table.setdefault(char, (stroke,))
    for char, strokes in dead.items():
        table.setdefault(char, strokes)
    for code, key in layout.keys.items():
        if len(key.plain) == 1 and "a" <= key.plain <= "z":
            table.setdefault(chr(ord(key.plain) - 96), (Keystroke(code, ctrl=True),))
    for (code, shift), char in layout.controls.items():
        table.setdefault(char, (Keystroke(code, shift=shift, ctrl=True),))
    table["\t"] = (Keystroke(e.KEY_TAB),)
    table["\r"] = table["\n"] = (Keystroke(e.KEY_ENTER),)
    table[ESC] = table.get(ESC, (Keystroke(e.KEY_ESC),))
    return table


def text_to_events(text: str, layout: str, *, terminator: str | None = "enter",
                   start_s: float = 0.0, key_interval_s: float = 0.002,
                   caps_lock: bool = False) -> list[InputEvent]:
    """The evdev events of a scanner typing ``text`` then ``terminator`` (``enter``/``tab``).

    Like a USB HID keyboard: one report presses the modifiers and the key together, the
    next releases them, ``key_interval_s`` apart, each report ending with ``SYN_REPORT``.
    With ``caps_lock`` the scanner finds Caps Lock on: it toggles it first, types letters
    with Shift inverted, and toggles it back at the end.
    """
    strokes = keystrokes(text, layout)
    if terminator is not None:
        strokes.append(Keystroke(e.KEY_TAB if terminator == "tab" else e.KEY_ENTER))
    keys = LAYOUTS[layout].keys
    if caps_lock:
        strokes = [Keystroke(e.KEY_CAPSLOCK),
                   *(Keystroke(s.code, s.shift != keys[s.code].letter, s.altgr, s.ctrl)
                     if s.code in keys and not (s.altgr or s.ctrl) else s for s in strokes),
                   Keystroke(e.KEY_CAPSLOCK)]
    events: list[InputEvent] = []
    start_us = round(start_s * 1_000_000)
    step_us = max(2, round(key_interval_s * 1_000_000))
    for n, stroke in enumerate(strokes):
        mods = [code for code, on in ((e.KEY_LEFTCTRL, stroke.ctrl),
                                      (e.KEY_LEFTSHIFT, stroke.shift),
                                      (e.KEY_RIGHTALT, stroke.altgr)) if on]
        down_us = start_us + n * step_us
        for value, at_us in ((1, down_us), (0, down_us + step_us // 2)):
            sec, usec = divmod(at_us, 1_000_000)
            order = [*mods, stroke.code] if value else [stroke.code, *reversed(mods)]
            events += [InputEvent(sec, usec, e.EV_KEY, code, value) for code in order]
            events.append(InputEvent(sec, usec, e.EV_SYN, e.SYN_REPORT, 0))
    return events


def key_name(code: int) -> str:
    """``KEY_F1`` for 59; the number when evdev has no name."""
    name = e.KEY.get(code)
    if isinstance(name, list | tuple):
        name = name[0]
    return str(name) if name else f"key {code}"


_COMBINING = {"^": "\u0302", "`": "\u0300", "\u00b4": "\u0301", "~": "\u0303", "¨": "\u0308"}
_TERMINATOR_KEYS = {"enter": "Enter", "tab": "Tab", "either": "Enter or Tab"}


def compose(dead: str, char: str) -> str:
    """What a dead key followed by ``char`` types (Windows rules, Latin-1 results only)."""
    if char == " ":
        return dead
    composed = unicodedata.normalize("NFC", char + _COMBINING.get(dead, ""))
    if len(composed) == 1 and ord(composed) < 0x100:
        return composed
    return dead + char


class KeyDecoder:
    """Key events of one wedge scanner in, complete reads out. Pure: no I/O, no clock.

    Feed every event with :meth:`feed`; it returns the reads the event completed (a
    :class:`RawScan` at the terminator) or discarded. Only key-down events type; key-up
    events release modifiers; autorepeat (value 2) is ignored, since a scanner presses
    every character itself and a repeat only means its key-up came late. ``EV_SYN``,
    ``EV_MSC`` and other event types are ignored.

    The inter-character timeout is measured between event timestamps (the kernel's), so
    a gap inside a burst read at once still cuts the read; :meth:`expire` is for the
    driver to call when no event came for ``inter_char_timeout_s``.
    """

    def __init__(self, layout: str = "us", *, terminator: str = "either",
                 inter_char_timeout_s: float = 0.1, max_length: int = 4096,
                 caps_lock: bool = False) -> None:
        self.layout = LAYOUTS[layout]
        self.terminator = terminator
        self.timeout_s = inter_char_timeout_s
        self.max_length = max_length
        self.caps_lock = caps_lock
        self._held: set[int] = set()
        self._text: list[str] = []
        self._problem: Discarded | None = None
        self._skipping = False
        self._dead = ""
        self._alt_digits = ""
        self._last_s: float | None = None

    @property
    def pending(self) -> bool:
        """Part of a read is buffered (a terminator or the timeout will end it)."""
        return bool(self._text or self._problem or self._skipping or self._dead
                    or self._alt_digits)

    @property
    def active(self) -> bool:
        """A read is pending or a key is held: the driver should time the silence."""
        return self.pending or bool(self._held)

    def feed_all(self, events: Iterable[InputEvent]) -> list[ReadOutcome]:
        """:meth:`feed` for a batch of events."""
        return [outcome for event in events for outcome in self.feed(event)]

    def feed(self, event: InputEvent) -> list[ReadOutcome]:
        """Take one event; return the reads it completed or discarded (usually none)."""
        if event.type != e.EV_KEY:
            return []
        out: list[ReadOutcome] = []
        now_s = event.timestamp()
        if self.pending and self._last_s is not None and now_s - self._last_s > self.timeout_s:
            out += self._discard_partial()
        self._last_s = now_s
        code, value = event.code, event.value
        if code in MODIFIER_KEYS:
            if value == 1:
                self._held.add(code)
            elif value == 0:
                self._held.discard(code)
                if code == e.KEY_LEFTALT and self._alt_digits:
                    out += self._alt_code()
            return out
        if value != 1 or code in IGNORED_KEYS:
            return out
        if code == e.KEY_CAPSLOCK:
            self.caps_lock = not self.caps_lock
        elif code in ENTER_KEYS:
            out += self._char("\r")
        elif code == e.KEY_TAB:
            out += self._char("\t")
        elif code == e.KEY_ESC:
            out += self._char(ESC)
        elif code in _KEYPAD_DIGITS and self._alt_held():
            # The code counts modulo 256, and 10**8 is a multiple of 256: the first digit
            # (a leading 0 means code page 1252) and the last eight are all that matter.
            digits = self._alt_digits + _KEYPAD_DIGITS[code]
            self._alt_digits = digits[0] + digits[-8:] if len(digits) > 9 else digits
        else:
            out += self._key(code)
        return out

    def expire(self) -> list[ReadOutcome]:
        """No event for the timeout: discard the partial read, release held keys."""
        self._held.clear()
        self._last_s = None
        return self._discard_partial() if self.pending else []

    # ------------------------------------------------------------ typing
    def _alt_held(self) -> bool:
        return e.KEY_LEFTALT in self._held and not self._held & (CTRL_KEYS | {e.KEY_RIGHTALT})

    def _key(self, code: int) -> list[ReadOutcome]:
        held = self._held
        ctrl = bool(held & CTRL_KEYS)
        shift = bool(held & SHIFT_KEYS)
        altgr = e.KEY_RIGHTALT in held or (ctrl and e.KEY_LEFTALT in held)
        key = self.layout.keys.get(code)
        char, level = "", "plain"
        if key is not None and altgr:
            char, level = key.altgr, "altgr"
        elif ctrl:
            if key is not None and len(key.plain) == 1 and "a" <= key.plain <= "z":
                char = chr(ord(key.plain) - 96)
            else:
                char = self.layout.controls.get((code, shift)) \
                    or self.layout.controls.get((code, False), "")
        elif key is not None and e.KEY_LEFTALT not in held:
            level = "shift" if shift != (self.caps_lock and key.letter) else "plain"
            char = getattr(key, level)
        if not char:
            return self._unknown(code)
        if key is not None and not ctrl and level in key.dead:
            dead, self._dead = self._dead, char
            return self._append(dead) if dead else []
        return self._char(char)

    def _alt_code(self) -> list[ReadOutcome]:
        """Alt released after keypad digits: code page 1252 with a leading 0, else 437."""
        digits, self._alt_digits = self._alt_digits, ""
        byte = bytes([int(digits) % 256])
        try:
            char = byte.decode("cp1252" if digits.startswith("0") else "cp437")
        except UnicodeDecodeError:
            char = byte.decode("latin-1")
        return self._char(char)

    def _char(self, char: str) -> list[ReadOutcome]:
        if char in "\r\n" and self.terminator in ("enter", "either"):
            return self._complete()
        if char == "\t" and self.terminator in ("tab", "either"):
            return self._complete()
        if char == "\r":
            char = "\n"
        if self._dead:
            dead, self._dead = self._dead, ""
            char = compose(dead, char)
        return self._append(char)

    def _append(self, chars: str) -> list[ReadOutcome]:
        if self._skipping:
            return []
        self._text.append(chars)
        if sum(map(len, self._text)) <= self.max_length:
            return []
        raw = "".join(self._text).encode()[:self.max_length]
        self._text.clear()
        self._problem = None
        self._skipping = True
        return [Discarded("too_long", f"read longer than {self.max_length} characters "
                          "discarded (no terminator: check the scanner's suffix)", raw)]

    def _unknown(self, code: int) -> list[ReadOutcome]:
        if self._problem is None and not self._skipping:
            mods = "+".join(key_name(k).removeprefix("KEY_") for k in sorted(self._held))
            what = f"{mods}+{key_name(code)}" if mods else key_name(code)
            self._problem = Discarded(
                "unknown_key", f"{what} types no character on the {self.layout.name} "
                "layout (is the scanner set to this keyboard country?)")
        return []

    # ------------------------------------------------------------ endings
    def _complete(self) -> list[ReadOutcome]:
        dead, self._dead = self._dead, ""
        overflow = self._append(dead) if dead else []
        text, problem, skipping = "".join(self._text), self._problem, self._skipping
        self._reset()
        if skipping:
            return overflow
        if problem is not None:
            return [Discarded(problem.code, f"{problem.message}; read {_preview(text)} "
                              "discarded", text.encode())]
        return [RawScan(text, text.encode())] if text else []

    def _discard_partial(self) -> list[ReadOutcome]:
        text, problem, skipping = "".join(self._text) + self._dead, self._problem, self._skipping
        self._reset()
        if skipping:
            return []
        if problem is not None:
            return [Discarded(problem.code, f"{problem.message}; read {_preview(text)} "
                              "discarded", text.encode())]
        wanted = _TERMINATOR_KEYS[self.terminator]
        return [Discarded("partial_scan", f"partial read {_preview(text)} discarded: no "
                          f"{wanted} within {self.timeout_s * 1000:g} ms", text.encode())]

    def _reset(self) -> None:
        self._text.clear()
        self._problem = None
        self._skipping = False
        self._dead = ""
        self._alt_digits = ""


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
