"""Pure-Python re-implementation of the tokenization used by coco-caption.

coco-caption (``pycocoevalcap.tokenizer.ptbtokenizer``) runs the Stanford
CoreNLP 3.4.1 ``PTBTokenizer`` with ``-preserveLines -lowerCase`` over all
captions (one per line, inner newlines replaced by spaces), then drops the
tokens in :data:`PUNCTUATIONS`.  This module reproduces that without Java:

* :func:`ptb_tokenize` -- one caption -> list of tokens (as if the caption was
  tokenized on its own, i.e. it is the last line of the file);
* :func:`tokenize_corpus` -- ``{id: [caption, ...]}`` -> ``{id: [tokenized
  caption, ...]}``, equal to ``PTBTokenizer().tokenize`` (captions given as
  plain strings instead of ``{"caption": ...}`` dicts).

The lexer is a longest-match emulation of the JFlex rules of ``PTBLexer``
(ties go to the earlier rule, trailing context counts towards the match
length, as in JFlex).  Whitespace-separated chunks are lexed once and cached,
so tokenizing large training corpora is fast.  Some deliberate quirks of the
reference pipeline are reproduced on purpose, e.g. ``-lowerCase`` turns
``-LRB-`` into ``-lrb-`` which is then *not* removed by the punctuation
filter, single letters keep a final period (``"b."``), ``cannot`` -> ``can
not``, ``gonna`` -> ``gon na``, characters outside the BMP (emoji) are deleted.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import lru_cache
from typing import Hashable, Iterable, Mapping

__all__ = ["PUNCTUATIONS", "ptb_tokenize", "tokenize_corpus"]

#: Tokens removed after PTB tokenization (pycocoevalcap's list, verbatim values).
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)


# --------------------------------------------------------------------------
# character classes
# --------------------------------------------------------------------------
_BMP_CATEGORIES = [
    "Cs" if 0xD800 <= cp <= 0xDFFF else unicodedata.category(chr(cp)) for cp in range(0x10000)
]


def _ranges_to_class(pred) -> str:
    """Regex class body of all BMP characters whose category satisfies ``pred``."""
    out = []
    start = prev = None
    for cp, cat in enumerate(_BMP_CATEGORIES):
        if pred(cat):
            if start is None:
                start = cp
            prev = cp
        elif start is not None:
            out.append((start, prev))
            start = None
    if start is not None:
        out.append((start, prev))
    parts = []
    for a, b in out:
        if a == b:
            parts.append(re.escape(chr(a)))
        else:
            parts.append(f"{re.escape(chr(a))}-{re.escape(chr(b))}")
    return "".join(parts)


_L = _ranges_to_class(lambda c: c[0] == "L")
_D = _ranges_to_class(lambda c: c == "Nd")
del _BMP_CATEGORIES
# extra "letters" PTBLexer accepts inside words (soft hyphen, combining marks, ...)
_LX = "\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u036f\u0483-\u0487\u0591-\u05bd\u064b-\u065e\u0900-\u0903\u093c\u093e-\u094e"
_LETTER = f"(?:[{_L}{_LX}]|&[aeiouAEIOU](?:acute|grave|uml);)"
_ALNUM = f"[{_L}{_D}]"  # [:letter:]|[:digit:]
_DIGIT = f"[{_D}]"

_SPACE = "[ \t\u00a0\u2000-\u200a\u3000]"
_NEWLINE = "(?:\r\n|[\r\n\u2028\u2029\u000b\u000c\u0085])"
_SPACENL = f"(?:{_SPACE}|{_NEWLINE})"
_APOS = "(?:['\u0092\u2019]|&apos;)"
_APOSETC = "(?:['\u0092\u2019`\u0091\u2018\u201b]|&apos;)"
_HYPHEN = "[-_\u058a\u2010\u2011]"


def _ci(words: str) -> str:
    """Case-insensitive literal alternation (JFlex %caseless on literals)."""
    return f"(?i:{words})"


_NUM = f"(?:{_DIGIT}*(?:[.:,\u00ad\u066b\u066c]{_DIGIT}+)+|{_DIGIT}+)"
_NUMBER = f"[-+]?{_NUM}"
_WORD = f"{_LETTER}(?:{_LETTER}|{_DIGIT})*(?:[.!?]{_LETTER}(?:{_LETTER}|{_DIGIT})*)*"
_REDAUX = f"{_APOS}(?:[msdMSD]|{_ci('re|ve|ll')})"
_SWORD = "[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"
_SREDAUX = f"{_ci('n')}{_APOSETC}{_ci('t')}"
_APOWORD = (
    f"(?:{_APOS}{_ci('n')}{_APOS}?|[lLdDjJ]{_APOS}|{_ci('dunkin|somethin|ol')}{_APOS}|{_APOS}{_ci('em')}"
    f"|[A-HJ-XZn]{_APOSETC}[{_L}]{{2}}[{_L}]*|{_APOS}[2-9]0{_ci('s')}|{_APOS}{_ci('till?')}"
    f"|[{_L}]+[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z][{_L}]*|{_APOS}{_ci('cause')}"
    f"|{_ci('cont')}'{_ci('d')}\\.?|'{_ci('twas')}|{_ci('nor')}'{_ci('easter')}|{_ci('c')}'{_ci('mon')}"
    f"|{_ci('e')}'{_ci('er')}|{_ci('s')}'{_ci('mores')}|{_ci('ev')}'{_ci('ry')}|{_ci('li')}'{_ci('l')}|{_ci('nat')}'{_ci('l')})"
)
_FULLURL = "(?i:https?)://[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]"
_LIKELYURL = (
    "(?:(?:www\\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\\.)+[a-zA-Z]{2,4})"
    "|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},\\-_$]+\\.)+(?i:com|net|org|edu)))"
    "(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"
)
_EMAIL = "[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00a0]*@(?:[^ \t\n\f\r\"<>|().\u00a0]+\\.)*[^ \t\n\f\r\"<>|().\u00a0]+"
_TWITTER = f"(?:@[a-zA-Z_][a-zA-Z_0-9]*|#{_WORD})"
_DATE = f"{_DIGIT}{{1,2}}[-/]{_DIGIT}{{1,2}}[-/]{_DIGIT}{{2,4}}"
_SUBSUPNUM = "[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)"
_FRAC = f"(?:{_DIGIT}{{1,4}}[- \u00a0])?{_DIGIT}{{1,4}}(?:\\\\?/|\u2044){_DIGIT}{{1,4}}"
_FRAC2 = "[\u00bc\u00bd\u00be\u2153-\u215e]"
_DOLSIGN = "(?:[A-Z]*\\$|#)"
_DOLSIGN2 = "[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]"
_THING = (
    f"(?:[dDoOlL]{_APOSETC}{_ALNUM})?{_ALNUM}+"
    f"(?:{_HYPHEN}(?:[dDoOlL]{_APOSETC}{_ALNUM})?{_ALNUM}+)*"
)
_THINGA = "[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+"
_THING3 = "[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
_ACRO = f"(?:[A-Za-z](?:\\.[A-Za-z])+|{_ci('canada|sino|korean|eu|japan|non')}-{_ci('u')}\\.{_ci('s')}|{_ci('u')}\\.{_ci('s')}\\.-(?:{_ci('u')}\\.{_ci('k')}|{_ci('u')}\\.{_ci('s')}\\.{_ci('s')}\\.{_ci('r')}))"
_HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:[A-Za-z0-9\u00ad]+|{_ACRO}\\.))+"
_ABMONTH = "jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec"
_ABDAYS = "mon|tues?|wed|thurs?|fri"
_ABSTATE = (
    f"(?:{_ci('ala|ariz|calif|colo|conn|dak|del|fla|ga|ind|kans?|ky|la|md|mich|minn|mo|mont|neb|nev|okla|pa|penn|tenn|tex|va|vt|wisc?|wyo')}"
    f"|A{_ci('rk')}|I{_ci('ll')}|M{_ci('ass')}|M{_ci('iss')}|O{_ci('re')}|W{_ci('ash')})"
)
_ABCOMP = "inc|cos?|corp|pp?tys?|ltd|plc|bancorp|dept|bhd|assn|univ|intl|sys"
_ABPTIT = "jr|sr|bros|(?:ed|ph)\\.d|blvd|rd|esq"
_ABBREV1 = f"(?:{_ci(_ABMONTH + '|' + _ABDAYS + '|' + _ABCOMP + '|' + _ABPTIT + '|etc|al|seq|est|ext|tel|ph')}|{_ABSTATE})\\."
_ABNUM = _ci("nos?|prop")
_ABTITLE = (
    f"(?:{_ci('mrs?|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|mt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|sq|ft')}"
    f"|M{_ci('iss')})"
)
_ABBREV4_WORDS = _ci("vs|alex|wm|jos|cie|a\\.k\\.a|cf|treas|invt|elec|natl|m[ft]g")
_ABBREV4 = f"(?:{_ACRO}|{_ABTITLE}|{_ABBREV4_WORDS}|[A-Za-z])"
_SENT_WORDS = "(?:" + "|".join(
    w[0] + _ci(w[1:]) if len(w) > 1 else w
    for w in sorted(
        (
            "About According Additionally After An A As At But Earlier He Her Here However If In It Last Many "
            "More Now Once One Other Our She Since So Some Such That The Then There These They This We When "
            "While What Yet You"
        ).split(),
        key=len,
        reverse=True,
    )
) + "|M" + _ci("r") + "\\.|M" + _ci("s") + "\\.)"
_INSENTP = "[,;:\u3001]"
_PHONE = (
    "(?:(?:\\([0-9]{2,3}\\)[ \u00a0]?|(?:\\+\\+?)?(?:[0-9]{2,4}[- \u00a0])?[0-9]{2,4}[- \u00a0])[0-9]{3,4}[- \u00a0]?[0-9]{3,5}"
    "|(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5})"
)
_MISCSYMBOL = (
    "[+%&~^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00ba\u00d7\u00f7\u0387\u05be\u05c0\u05c3\u05c6\u05f3\u05f4"
    "\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e\u066a\u066d\u0703-\u070d\u07f6-\u07f8\u0964\u0965\u0e4f\u1fbd"
    "\u2016\u2017\u2020-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044\u207a-\u207f\u208a-\u208e\u2100-\u214f\u2190-\u21ff"
    "\u2200-\u2bff\u3012\u30fb\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]"
)
_QUOTES = (
    f"(?:{_APOS}|''|[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb]{{1,2}})"
)
_SGML = (
    "<(?:[!?][A-Za-z-][^>\r\n]*|/?[A-Za-z][A-Za-z0-9:.-]*"
    "(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.-]*(?:[ ]*=[ ]*(?:'[^'\r\n]*'|\"[^\"\r\n]*\"|[A-Za-z][A-Za-z0-9_:.-]*))?"
    "|'[^'\r\n]*'|\"[^\"\r\n]*\"|[ ]*/))*[ ]*)>"
)


# --------------------------------------------------------------------------
# token normalisations (PTBLexer actions)
# --------------------------------------------------------------------------
def _latex_quotes(tok: str, left: bool) -> str:
    if left:
        tok = tok.replace("&apos;", "`").replace("'", "`")
        tok = tok.replace("&quot;", "``").replace('"', "``")
    else:
        tok = tok.replace("&apos;", "'")
        tok = tok.replace("&quot;", "''").replace('"', "''")
    tok = re.sub("[\u0091\u2018\u201b\u2039]", "`", tok)
    tok = re.sub("[\u0092\u2019\u203a]", "'", tok)
    tok = re.sub("[\u0093\u201c\u00ab]", "``", tok)
    tok = re.sub("[\u0094\u201d\u00bb]", "''", tok)
    return tok


def _no_soft(tok: str) -> str:
    out = tok.replace("\u00ad", "")
    return out if out else "-"


def _currency(tok: str) -> str:
    tok = tok.replace("\u00a2", "cents").replace("\u00a3", "#")
    return re.sub("[\u0080\u00a4\u20a0\u20ac]", "$", tok)


_FRACS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}


def _nbsp(tok: str) -> str:
    return tok.replace(" ", "\u00a0")


def _phone(tok: str) -> str:
    return _nbsp(tok).replace("(", "-LRB-").replace(")", "-RRB-")


def _hyphens(tok: str) -> str:
    return "--" if 3 <= len(tok) <= 4 else tok


_SKIP = object()

# (regex, trailing-context regex or None, action, pushback)
#   action: None -> token text unchanged, str -> constant, callable -> f(text), _SKIP -> no token
#   pushback: number of characters of the match given back to the input
_RULES_SRC = [
    (_ci("cannot"), None, None, 3),
    (_ci("gonna|gotta|lemme|gimme|wanna"), None, None, 2),
    (f"'{_ci('tis')}", None, None, 2),
    (f"'{_ci('twas')}", None, None, 3),
    (_SGML, None, _nbsp, 0),
    (f"&{_ci('md|mdash|ndash')};|[\u0096\u0097\u2013\u2014\u2015]", None, "--", 0),
    (_ci("&amp;"), None, "&", 0),
    (f"&(?:{_ci('ht|tl|ur|lr|qc|ql|qr|odq|cdq')}|#[0-9]+);", None, None, 0),
    (_WORD, _REDAUX, _no_soft, 0),
    (_SWORD, _SREDAUX, _no_soft, 0),
    (_WORD, None, _no_soft, 0),
    (_APOWORD, None, None, 0),
    (f"[yY]{_APOS}", f"[{_L}]", None, 0),
    (_FULLURL, None, None, 0),
    (_LIKELYURL, None, None, 0),
    (_EMAIL, None, None, 0),
    (_TWITTER, None, None, 0),
    (_REDAUX, "[^A-Za-z]", lambda t: _latex_quotes(t, False), 0),
    (_SREDAUX, None, lambda t: _latex_quotes(t, False), 0),
    (_DATE, None, None, 0),
    (_NUMBER, None, _no_soft, 0),
    (_SUBSUPNUM, None, None, 0),
    (_FRAC, None, _nbsp, 0),
    (_FRAC2, None, lambda t: _FRACS.get(t, t), 0),
    (f"-(?:{_ci('rrb|lrb|rcb|lcb|rsb|lsb')})-|{_ci('c')}\\.{_ci('d')}\\.{_ci('s')}|{_ci('pro|anti')}-|{_ci('s')}(?:&|&amp;){_ci('p')}-500|{_ci('s')}(?:&|&amp;){_ci('ls')}|{_ci('cap')}{_APOS}{_ci('n')}|{_ci('c')}{_APOS}{_ci('est')}",
     None, lambda t: t.replace("&amp;", "&"), 0),
    (_THING3, None, None, 0),
    (_DOLSIGN, None, None, 0),
    (_DOLSIGN2, None, _currency, 0),
    # a lone letter + period followed by a typical sentence start ("b. The") loses its period
    ("[A-Za-z]\\.", f"{_SPACENL}+{_SENT_WORDS}{_SPACE}", lambda t: t[:-1], 0),
    (f"{_ABBREV1}", f"{_SPACENL}(?:{_SPACENL}|[A-Z]|{_SGML})", None, 0),
    (_ABBREV1, None, None, 0),
    (f"{_ABNUM}\\.", f"{_SPACENL}?{_DIGIT}", None, 0),
    (f"{_ABBREV4}\\.", None, None, 0),
    (_ABBREV4, _SPACE, None, 0),
    (_ACRO, _SPACENL, None, 0),
    (f"{_APOS}[0-9][0-9]", _SPACENL, None, 0),
    (f"{_WORD}\\.", _INSENTP, _no_soft, 0),
    (_PHONE, None, _phone, 0),
    ("\"|&quot;", "[A-Za-z0-9$]", lambda t: _latex_quotes(t, True), 0),
    ("\"|&quot;", None, lambda t: _latex_quotes(t, False), 0),
    ("\x7f", None, _SKIP, 0),
    ("<<|>>", None, None, 0),
    ("\\[|&lt;", None, "-LSB-", 0),
    ("\\]|&gt;", None, "-RSB-", 0),
    ("[<>]", None, None, 0),
    ("\\{", None, "-LCB-", 0),
    ("\\}", None, "-RCB-", 0),
    ("\\(", None, "-LRB-", 0),
    ("\\)", None, "-RRB-", 0),
    ("-+", None, _hyphens, 0),
    ("\\.{3,5}|(?:\\.[ \u00a0]){2,4}\\.|[\u0085\u2026]", None, "...", 0),
    ("@+|#+|_+", None, None, 0),
    ("\\*+|(?:\\\\\\*){1,3}", None, None, 0),
    (_INSENTP, None, None, 0),
    ("[?!]+", None, None, 0),
    ("[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]", None, None, 0),
    ("=", None, None, 0),
    ("/", None, None, 0),
    (f"{_HTHING}\\.", _INSENTP, _no_soft, 0),
    (_HTHING, None, _no_soft, 0),
    (f"{_THING}\\.", _INSENTP, None, 0),
    (_THING, None, None, 0),
    (f"{_THINGA}\\.", _INSENTP, lambda t: t.replace("&amp;", "&"), 0),
    (_THINGA, None, lambda t: t.replace("&amp;", "&"), 0),
    ("'", "[A-Za-z][^ \t\n\r\u00a0]", lambda t: _latex_quotes(t, True), 0),
    (_REDAUX, None, lambda t: _latex_quotes(t, False), 0),
    (_QUOTES, None, lambda t: _latex_quotes(t, False), 0),
    (_MISCSYMBOL, None, None, 0),
    (f"\x00|{_SPACE}+|[\u200b\u200e\u200f\ufeff]|&nbsp;", None, _SKIP, 0),
    (_NEWLINE, None, "\n", 0),
]


def _compile_rules():
    rules = []
    for pat, ctx, action, pushback in _RULES_SRC:
        full = f"(?P<t>{pat})" + (f"(?:{ctx})" if ctx else "")
        rules.append((re.compile(full), action, pushback))
    return rules


_RULES: list = []  # compiled lazily (about half a second), see _lex


def _lex(text: str, limit: int | None = None) -> list[str]:
    """Raw PTBLexer tokens (before lower-casing / punctuation removal).

    Newlines in ``text`` yield ``"\\n"`` tokens (``-preserveLines``).  With
    ``limit``, only tokens starting before ``text[limit]`` are produced (the
    rest of ``text`` only serves as right context).
    """
    if not _RULES:
        _RULES.extend(_compile_rules())
    out: list[str] = []
    pos = 0
    n = len(text) if limit is None else limit
    while pos < n:
        best_len = 0
        best = None
        for rx, action, pushback in _RULES:
            m = rx.match(text, pos)
            if m is not None:
                ln = m.end() - pos
                if ln > best_len:
                    best_len, best = ln, (m, action, pushback)
        if best is None:  # untokenizable character: deleted (PTBLexer default "firstDelete")
            pos += 1
            continue
        m, action, pushback = best
        tok = m.group("t")
        if pushback:
            tok = tok[: len(tok) - pushback]
        pos += len(tok)
        if action is None:
            out.append(tok)
        elif action is _SKIP:
            continue
        elif isinstance(action, str):
            out.append(action)
        else:
            out.append(action(tok))
    return out


def _finish(raw: Iterable[str]) -> list[str]:
    """``-lowerCase`` then coco-caption's punctuation filter (on the lower-cased tokens)."""
    res = []
    for t in raw:
        t = t.lower()
        if t not in PUNCTUATIONS:
            res.append(t)
    return res


# --------------------------------------------------------------------------
# fast path: whitespace chunks are lexed independently (and cached) unless the
# text contains one of the few constructs whose tokens can span whitespace.
# --------------------------------------------------------------------------
_WS = "[ \t\u00a0\u2000-\u200a\u3000\r\n\u2028\u2029\u000b\u000c\u0085\u200b\u200e\u200f\ufeff\x00]"
_CHUNK_RX = re.compile(f"({_WS}+)")
_WS_SET = frozenset(" \t\u00a0\u3000\r\n\u2028\u2029\u000b\u000c\u0085\u200b\u200e\u200f\ufeff\x00").union(
    chr(c) for c in range(0x2000, 0x200B)
)
_SPANNING_RX = re.compile(f"(?<![^{_WS[1:-1]}])[A-Za-z]\\.(?![^{_WS[1:-1]}])|<|{_DIGIT}[- \u00a0]{_DIGIT}|[0-9][ \u00a0]+[0-9(]|\\)[ \u00a0][0-9]|\\.[ \u00a0]\\.")
_ASTRAL_RX = re.compile("[\U00010000-\U0010ffff]")
_SIMPLE_RX = re.compile(r"[a-z]+")
_SIMPLE_SPECIAL = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])


@lru_cache(maxsize=1 << 18)
def _lex_chunk(chunk: str, follow: str) -> tuple[str, ...]:
    """Final (lower-cased, filtered) tokens of a whitespace-free chunk followed by ``follow``
    (the separator's first character and the next chunk's first character)."""
    if _SIMPLE_RX.fullmatch(chunk) and chunk not in _SIMPLE_SPECIAL:
        return (chunk,)
    raw = _lex(chunk + follow, limit=len(chunk))
    return tuple(_finish(t for t in raw if t != "\n"))


_FOLLOW_MAP = {c: "\n" for c in "\r\n\u2028\u2029\u000b\u000c\u0085"}
_FOLLOW_MAP.update({c: "\x00" for c in "\u200b\u200e\u200f\ufeff\x00"})


def _norm_char(d: str) -> str:
    """Collapse a look-ahead character to a representative of its class (for caching)."""
    if not d:
        return ""
    if "0" <= d <= "9":
        return "0"
    if "A" <= d <= "Z":
        return "A"
    if "a" <= d <= "z":
        return "a"
    return d


_FAST_RX = re.compile("[A-Za-z ,]*")
_FAST_SPECIAL_RX = re.compile("cannot|gonna|gotta|lemme|gimme|wanna")


def _fast_tokens(text: str, text_follow: str) -> list[str] | None:
    """Plain captions (ASCII letters, spaces, commas, one final . ! or ?) without the lexer."""
    t = text.rstrip(" ")
    end = t[-1:]
    if end and end in ".!?":
        t = t[:-1]
    if not _FAST_RX.fullmatch(t):
        return None
    low = t.lower()
    if _FAST_SPECIAL_RX.search(low):
        return None
    toks = low.replace(",", " ").split()
    if end == "." and toks and t[-1] != " " and t[-1] != ",":
        # "word." at the end: abbreviations ("etc.", "st.", "b.") may keep their period
        last = t[t.rfind(" ") + 1 :]
        if "," in last:
            return None
        toks[-1:] = _lex_chunk(last + ".", text_follow[:1] + _norm_char(text_follow[1:2]))
    return toks


def _tokenize_text(text: str, text_follow: str = "") -> list[str]:
    """Tokens of one caption (no newlines in it) followed by ``text_follow``: ``""`` if the
    caption ends the input, else ``"\\n"`` + the start of the next line."""
    fast = _fast_tokens(text, text_follow)
    if fast is not None:
        return fast
    if _ASTRAL_RX.search(text):
        # PTBLexer (UTF-16 based) cannot tokenize surrogate halves: they are deleted.
        text = _ASTRAL_RX.sub("\x00", text)
    if _SPANNING_RX.search(text):
        raw = _lex(text + text_follow, limit=len(text))
        return _finish(t for t in raw if t != "\n")
    parts = _CHUNK_RX.split(text)
    toks: list[str] = []
    # parts = [chunk, sep, chunk, sep, ..., chunk]; the lexer's trailing contexts look at
    # most two characters past a chunk (separator + first char of the next chunk).
    last = len(parts) - 1
    for i in range(0, len(parts), 2):
        chunk = parts[i]
        if not chunk:
            continue
        if i < last:
            rest = parts[i + 1] + (parts[i + 2] or text_follow[1:2])
            follow = _FOLLOW_MAP.get(rest[0], " ") + (
                _FOLLOW_MAP.get(rest[1], " ") if rest[1:2] and rest[1] in _WS_SET else _norm_char(rest[1:2])
            )
        else:
            follow = text_follow[:1] + _norm_char(text_follow[1:2])
        toks.extend(_lex_chunk(chunk, follow))
    return toks


def ptb_tokenize(text: str) -> list[str]:
    """Tokenize one caption exactly like coco-caption (PTBTokenizer + punctuation removal).

    Newlines inside ``text`` are replaced by spaces (as pycocoevalcap does).  The
    result equals ``PTBTokenizer().tokenize({0: [{"caption": text}]})[0][0].split()``.
    """
    return _tokenize_text(text.replace("\n", " "))


def tokenize_corpus(captions: Mapping[Hashable, Iterable[str]]) -> dict[Hashable, list[str]]:
    """Tokenize ``{image_id: [caption, ...]}`` like pycocoevalcap's ``PTBTokenizer.tokenize``.

    Captions may be plain strings or ``{"caption": str}`` dicts.  Returns
    ``{image_id: ["space joined tokens", ...]}`` in the input order.
    """
    items = []
    for k, caps in captions.items():
        for c in caps:
            if isinstance(c, Mapping):
                c = c["caption"]
            if not isinstance(c, str):
                raise TypeError(f"caption for id {k!r} must be a string, got {type(c).__name__}")
            items.append((k, c))
    out: dict[Hashable, list[str]] = {}
    n = len(items)
    # pycocoevalcap strips trailing whitespace of the whole file (sentences.rstrip()) only for
    # the stdin copy, which the Java tool ignores; the temp file holds '\n'.join(captions).
    lines = [c.replace("\n", " ") for _, c in items]
    for idx, (k, _) in enumerate(items):
        follow = "" if idx == n - 1 else "\n" + (lines[idx + 1][:24] or "\n")
        toks = _tokenize_text(lines[idx], follow)
        out.setdefault(k, []).append(" ".join(toks))
    for k in captions:
        out.setdefault(k, [])
    return out


if __name__ == "__main__":  # pragma: no cover - manual helper
    for line in sys.stdin:
        print(" ".join(ptb_tokenize(line.rstrip("\n"))))
