#!/usr/bin/env python3
"""scripts/make_corpora.py — loom's demo corpora, built deterministically from material on this machine.

    python3 scripts/make_corpora.py --out DIR [--scale S] [--commonsense-source auto|bible|docs]

Writes
  DIR/commonsense/{train,heldout}.jsonl  {"text": ...} per line: public-domain English prose, the King James
                                         Bible from Debian's bible-kjv (`bible`), one document per chapter.
                                         Without `bible`: free English texts under /usr/share/common-licenses
                                         and /usr/share/doc, and MANIFEST.txt says so.
  DIR/stem/{train,heldout}.jsonl         {"text": ...} per line: generated math problems with worked
                                         solutions, every answer checked by recomputation before it is
                                         written, mixed with real source code (Python standard library
                                         modules, C headers under /usr/include), one file per document.
  DIR/agentic/{train,heldout}.jsonl      {"segments": [{"role": "system|user|assistant|tool", "text": ...}]}
                                         per line: multi-step tool-use trajectories over simulated tools,
                                         each final answer checked against a ground truth computed apart.
  DIR/MANIFEST.txt                       what each file holds, record counts, bytes and sha256 of each file.

Deterministic: the same machine and arguments give the same bytes (fixed seeds, sorted file lists, no
timestamps). Held-out: every 20th document of each source (index % 20 == 0), about 5 %. --scale multiplies
the generated counts and the code budget, and below 1 keeps an evenly spread share of the chapters. Python 3
standard library only.
"""
import argparse
import ast
import datetime
import difflib
import gzip
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction

HELDOUT_EVERY = 20
BASE_MATH_PROBLEMS = 2400       # ~1 MB at scale 1
BASE_CODE_BYTES = 1_600_000     # real source code at scale 1
BASE_TRAJECTORIES = 700         # ~1.8 MB at scale 1
FALLBACK_TEXT_BYTES = 4_000_000  # commonsense budget when `bible` is missing, at scale 1


class Unverified(Exception):
    """A generated answer failed its independent check: nothing is written."""


def check(cond, what):
    # not `assert`: checks must survive python3 -O
    if not cond:
        raise Unverified(what)


# ---------------------------------------------------------------------------------------------------
# shared helpers


def split_heldout(records):
    train, held = [], []
    for i, r in enumerate(records):
        (held if i % HELDOUT_EVERY == 0 and len(records) > 1 else train).append(r)
    return train, held


def dedupe(records):
    seen, out = set(), []
    for r in records:
        k = json.dumps(r, ensure_ascii=False, sort_keys=True)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def scaled(n, scale, minimum=2):
    return max(minimum, int(round(n * scale)))


def fmt_int(n):
    return f"{n:,}"


def exact_decimal(q):
    """Fraction -> its exact decimal string, or None when it does not terminate within 12 places."""
    q = Fraction(q)
    for k in range(13):
        v = q * 10**k
        if v.denominator == 1:
            n = v.numerator
            s = str(abs(n)).rjust(k + 1, "0")
            return ("-" if n < 0 else "") + (s[:-k] + "." + s[-k:] if k else s)
    return None


def fmt_frac(q):
    q = Fraction(q)
    return str(q.numerator) if q.denominator == 1 else f"{q.numerator}/{q.denominator}"


def fmt_num(q):
    """Fraction -> decimal text, rounded to 10 places, no trailing zeros (what the simulated tools print)."""
    q = Fraction(q)
    if q.denominator == 1:
        return str(q.numerator)
    s = exact_decimal(round(q, 10))
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s if s not in ("-0", "") else "0"


def round_half_up(q, places):
    """Fraction -> Decimal rounded half up: the ground-truth rounding, computed apart from the tools."""
    with localcontext() as ctx:
        ctx.prec = 60
        d = Decimal(q.numerator) / Decimal(q.denominator)
        return d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def near_boundary(q, places, what="tie"):
    """True when q*10^places sits within 1e-6 of a rounding tie (what="tie") or of an integer (what="int"),
    where two reasonable roundings could disagree; tasks resample such values."""
    v = Fraction(q) * 10**places
    frac = v - math.floor(v)
    eps = Fraction(1, 10**6)
    if what == "tie":
        return abs(frac - Fraction(1, 2)) < eps
    return frac < eps or frac > 1 - eps


def num(x):
    """A number as the model reads it from a tool observation (JSON number or decimal string) -> Fraction."""
    if isinstance(x, float):
        return Fraction(repr(x))
    return Fraction(str(x))


def jnum(q):
    """Fraction -> a JSON number (int when whole, else the shortest float)."""
    q = Fraction(q)
    return q.numerator if q.denominator == 1 else float(q)


# ---------------------------------------------------------------------------------------------------
# commonsense: public-domain English prose

KJV_BOOKS = {
    "Ge": "Genesis", "Exo": "Exodus", "Lev": "Leviticus", "Num": "Numbers", "Deu": "Deuteronomy",
    "Josh": "Joshua", "Jdgs": "Judges", "Ruth": "Ruth", "1Sm": "1 Samuel", "2Sm": "2 Samuel",
    "1Ki": "1 Kings", "2Ki": "2 Kings", "1Chr": "1 Chronicles", "2Chr": "2 Chronicles", "Ezra": "Ezra",
    "Neh": "Nehemiah", "Est": "Esther", "Job": "Job", "Psa": "Psalms", "Prv": "Proverbs",
    "Eccl": "Ecclesiastes", "SSol": "Song of Solomon", "Isa": "Isaiah", "Jer": "Jeremiah",
    "Lam": "Lamentations", "Eze": "Ezekiel", "Dan": "Daniel", "Hos": "Hosea", "Joel": "Joel", "Amos": "Amos",
    "Obad": "Obadiah", "Jonah": "Jonah", "Mic": "Micah", "Nahum": "Nahum", "Hab": "Habakkuk",
    "Zep": "Zephaniah", "Hag": "Haggai", "Zec": "Zechariah", "Mal": "Malachi", "Mat": "Matthew",
    "Mark": "Mark", "Luke": "Luke", "John": "John", "Acts": "Acts", "Rom": "Romans", "1Cor": "1 Corinthians",
    "2Cor": "2 Corinthians", "Gal": "Galatians", "Eph": "Ephesians", "Phi": "Philippians",
    "Col": "Colossians", "1Th": "1 Thessalonians", "2Th": "2 Thessalonians", "1Tim": "1 Timothy",
    "2Tim": "2 Timothy", "Titus": "Titus", "Phmn": "Philemon", "Heb": "Hebrews", "Jas": "James",
    "1Pet": "1 Peter", "2Pet": "2 Peter", "1Jn": "1 John", "2Jn": "2 John", "3Jn": "3 John", "Jude": "Jude",
    "Rev": "Revelation",
}
VERSE_RE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+)(?: (.*))?$")


def kjv_chapters():
    """[(title, [verse, ...]), ...] in canonical order from `bible`, or None when it is not installed or fails."""
    exe = shutil.which("bible")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "-f", "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, check=True, env=dict(os.environ, LC_ALL="C")).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    chapters, key = [], None
    for line in out.decode("utf-8", errors="replace").splitlines():
        m = VERSE_RE.match(line)
        if not m:
            if chapters and line.strip():  # a wrapped verse: continue the previous one
                chapters[-1][1][-1] += " " + line.strip()
            continue
        book, chap, text = m.group(1), int(m.group(2)), (m.group(4) or "").strip()
        if (book, chap) != key:
            key = (book, chap)
            chapters.append((f"{KJV_BOOKS.get(book, book)} {chap}", []))
        chapters[-1][1].append(text)
    return chapters or None


def free_text_files():
    """Free English texts on any Debian system: the common licenses and the packages' copyright and README
    files, yielded as (path, text) in path order, deduplicated by content, UTF-8 prose only."""
    paths = []
    lic = "/usr/share/common-licenses"
    if os.path.isdir(lic):
        paths += [os.path.join(lic, n) for n in sorted(os.listdir(lic))]
    doc = "/usr/share/doc"
    if os.path.isdir(doc):
        for pkg in sorted(os.listdir(doc)):
            d = os.path.join(doc, pkg)
            if not os.path.isdir(d) or os.path.islink(d):
                continue
            for n in sorted(os.listdir(d)):
                if n == "copyright" or n.startswith("README"):
                    paths.append(os.path.join(d, n))
    seen = set()
    for p in paths:
        if not os.path.isfile(p):
            continue
        try:
            with open(p, "rb") as f:
                raw = f.read(2_000_000)
            if p.endswith(".gz"):
                raw = gzip.decompress(raw)
            text = raw.decode("utf-8")
        except (OSError, ValueError, EOFError):
            continue
        text = text.replace("\r\n", "\n").strip()
        if len(text) < 300 or "\x00" in text:
            continue
        letters = sum(c.isalpha() or c.isspace() for c in text)
        if letters < 0.8 * len(text):
            continue
        h = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        yield p, text


def build_commonsense(scale, source):
    chapters = kjv_chapters() if source in ("auto", "bible") else None
    if chapters is None and source == "bible":
        sys.exit("make_corpora: error: `bible` (Debian package bible-kjv) is not installed; "
                 "run scripts/install-deps.sh or pass --commonsense-source docs")
    if chapters is not None:
        docs = [{"text": title + "\n" + "\n".join(verses)} for title, verses in chapters]
        if scale < 1:  # an evenly spread subset of the chapters
            docs = [d for i, d in enumerate(docs) if math.floor((i + 1) * scale) != math.floor(i * scale)]
        desc = (f"the King James Bible (public domain), from `bible -f Gen1:1-Rev22:21` (Debian bible-kjv): "
                f"one document per chapter, a title line (book and chapter) then one verse per line, verse "
                f"references stripped; {len(chapters)} chapters"
                + ("" if scale >= 1 else f", of which an evenly spread {len(docs)} kept at scale {scale:g}"))
    else:
        budget = FALLBACK_TEXT_BYTES * min(scale, 1.0)
        docs, total = [], 0
        for _, text in free_text_files():
            if total >= budget:
                break
            docs.append({"text": text})
            total += len(text.encode("utf-8"))
        why = "`bible` (Debian bible-kjv) not found or failed" if source == "auto" else "--commonsense-source docs"
        desc = (f"FALLBACK ({why}): free English texts from /usr/share/common-licenses and the copyright and "
                f"README files under /usr/share/doc, one file per document, in path order, duplicates dropped; "
                f"{len(docs)} files, up to {budget:.0f} bytes")
        print(f"make_corpora: warning: {why}; commonsense built from license and package documentation texts",
              file=sys.stderr)
    return (*split_heldout(dedupe(docs)), desc)


# ---------------------------------------------------------------------------------------------------
# stem (a): math problems with worked, checked solutions
#
# Every generator returns (kind, problem, steps, answer) after check()ing its answer by a route other than
# the one the worked solution takes (substitution, the builtin operation, a brute-force count).

PLACES = ["ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands", "millions",
          "ten-millions", "hundred-millions", "billions"]


def digits_rev(n):
    return [int(c) for c in reversed(str(n))]


def gen_addition(rng):
    a, b = rng.randint(1000, 9_999_999), rng.randint(1000, 9_999_999)
    da, db = digits_rev(a), digits_rev(b)
    steps = ["Line the numbers up by place value and add column by column from the right, carrying when a "
             "column reaches 10."]
    carry, out = 0, []
    for i in range(max(len(da), len(db))):
        x = da[i] if i < len(da) else 0
        y = db[i] if i < len(db) else 0
        s = x + y + carry
        terms = f"{x} + {y}" + (f" + {carry} (carried)" if carry else "")
        steps.append(f"{PLACES[i].capitalize()}: {terms} = {s}; write {s % 10}"
                     + (f" and carry {s // 10}." if s >= 10 else "."))
        out.append(s % 10)
        carry = s // 10
    if carry:
        steps.append(f"The last carry, {carry}, becomes the leading digit.")
        out.append(carry)
    result = int("".join(map(str, reversed(out))))
    check(result == a + b and result - b == a, f"addition {a} + {b} -> {result}")
    steps.append(f"Check: {result} - {b} = {a}.")
    problem = rng.choice([f"Compute {fmt_int(a)} + {fmt_int(b)}.", f"What is the sum of {a} and {b}?",
                          f"Add {a} and {b}."])
    return "arithmetic", problem, steps, str(result)


def gen_subtraction(rng):
    a, b = sorted((rng.randint(1000, 9_999_999), rng.randint(100, 9_999_999)), reverse=True)
    if a == b:
        a += rng.randint(1, 999)
    da, db = digits_rev(a), digits_rev(b)
    steps = ["Line the numbers up by place value and subtract column by column from the right, borrowing "
             "from the next column when the top digit is too small."]
    borrow, out = 0, []
    for i in range(len(da)):
        x = da[i]
        y = db[i] if i < len(db) else 0
        top = x - borrow
        lead = f"{x} - 1 (lent to the previous column) = {top}; " if borrow else ""
        if top < y:
            steps.append(f"{PLACES[i].capitalize()}: {lead}{top} is less than {y}, so borrow 1 from the next "
                         f"column: {top + 10} - {y} = {top + 10 - y}.")
            out.append(top + 10 - y)
            borrow = 1
        else:
            steps.append(f"{PLACES[i].capitalize()}: {lead}{top} - {y} = {top - y}.")
            out.append(top - y)
            borrow = 0
    result = int("".join(map(str, reversed(out))))
    check(borrow == 0 and result == a - b and result + b == a, f"subtraction {a} - {b} -> {result}")
    steps.append(f"Check: {result} + {b} = {a}.")
    problem = rng.choice([f"Compute {fmt_int(a)} - {fmt_int(b)}.", f"Subtract {b} from {a}.",
                          f"What is {a} minus {b}?"])
    return "arithmetic", problem, steps, str(result)


def gen_multiplication(rng):
    a = rng.randint(100, 99_999)
    b = rng.randint(12, 999)
    db = digits_rev(b)
    parts = [d * 10**i for i, d in enumerate(db) if d]
    steps = [f"Split {b} by place value: {b} = {' + '.join(str(p) for p in reversed(parts))}."]
    partials = []
    for p in reversed(parts):
        partials.append(a * p)
        steps.append(f"{a} × {p} = {a * p}.")
    total = sum(partials)
    steps.append(f"Add the partial products: {' + '.join(str(p) for p in partials)} = {total}.")
    check(total == a * b and total % a == 0 and total // a == b, f"multiplication {a} × {b} -> {total}")
    problem = rng.choice([f"Compute {a} × {b}.", f"What is the product of {a} and {b}?",
                          f"Multiply {fmt_int(a)} by {b}."])
    return "arithmetic", problem, steps, str(total)


def gen_division(rng):
    d = rng.randint(3, 97)
    n = rng.randint(1000, 9_999_999)
    s = str(n)
    k = 1
    while int(s[:k]) < d:
        k += 1
    cur = int(s[:k])
    q_digits = []
    steps = [f"Long division of {n} by {d}."]
    qd = cur // d
    rem = cur - qd * d
    steps.append(f"Start with {cur}: {d} goes into it {qd} time{'s' if qd != 1 else ''} "
                 f"({qd} × {d} = {qd * d}), remainder {rem}.")
    q_digits.append(qd)
    for ch in s[k:]:
        cur = rem * 10 + int(ch)
        qd = cur // d
        rem = cur - qd * d
        steps.append(f"Bring down {ch} to make {cur}: {d} goes into it {qd} time{'s' if qd != 1 else ''} "
                     f"({qd} × {d} = {qd * d}), remainder {rem}.")
        q_digits.append(qd)
    q = int("".join(map(str, q_digits)))
    check(q * d + rem == n and 0 <= rem < d and (q, rem) == divmod(n, d), f"division {n} ÷ {d} -> {q} r {rem}")
    steps.append(f"Check: {q} × {d} + {rem} = {q * d + rem}.")
    if rem:
        problem = rng.choice([f"Divide {n} by {d}. Give the quotient and the remainder.",
                              f"What are the quotient and remainder of {fmt_int(n)} ÷ {d}?"])
        answer = f"{q} remainder {rem}"
    else:
        problem = f"Compute {fmt_int(n)} ÷ {d}."
        answer = str(q)
    return "arithmetic", problem, steps, answer


def lin(a, b, var="x"):
    """a·var + b as text."""
    terms = []
    if a:
        terms.append(var if a == 1 else f"-{var}" if a == -1 else f"{a}{var}")
    if b or not terms:
        if terms:
            terms.append(f"+ {b}" if b > 0 else f"- {-b}")
        else:
            terms.append(str(b))
    return " ".join(terms)


def paren(v):
    """A number as a factor: parenthesized when negative or a fraction."""
    t = fmt_frac(v)
    return f"({t})" if v < 0 or "/" in t else t


def combo(terms, const=None):
    """sum of c·v over terms (+ const) as text, signs pulled out: combo([(3, -2), (-4, 5)]) = 3·(-2) - 4·5."""
    out = ""
    items = [(c, f"{abs(c)}·{paren(v)}") for c, v in terms if c]
    if const is not None and (const or not items):
        items.append((const, str(abs(const))))
    for i, (c, t) in enumerate(items):
        out += ("-" if c < 0 else "") + t if i == 0 else (" - " if c < 0 else " + ") + t
    return out or "0"


def gen_linear(rng):
    while True:
        a, c = rng.randint(-9, 12), rng.choice([0, 0] + list(range(-6, 7)))
        if a and a != c:
            break
    m = rng.randint(-60, 60)
    x = Fraction(m, a - c)
    b = rng.randint(-40, 40)
    d = m + b  # (a - c)x + b = d
    left, right = lin(a, b), lin(c, d)
    steps = []
    k = a - c
    if c:
        steps.append(f"{'Subtract' if c > 0 else 'Add'} {lin(abs(c), 0)} {'from' if c > 0 else 'to'} both "
                     f"sides: {lin(k, b)} = {d}.")
    if b:
        steps.append(f"{'Subtract' if b > 0 else 'Add'} {abs(b)} {'from' if b > 0 else 'to'} both sides: "
                     f"{lin(k, 0)} = {d - b}.")
    if k != 1:
        shown = f"{d - b}/{k}" if k > 0 else f"{d - b}/({k})"
        steps.append(f"Divide both sides by {k}: x = {shown}" + ("." if fmt_frac(x) == shown else f" = {fmt_frac(x)}."))
    lhs, rhs = a * x + b, c * x + d
    check(lhs == rhs and Fraction(d - b, k) == x, f"linear {left} = {right} -> {x}")
    right_side = f"{combo([(c, x)], d)} = {fmt_frac(rhs)}" if c else fmt_frac(rhs)
    steps.append(f"Check: the left side is {combo([(a, x)], b)} = {fmt_frac(lhs)} and the right side is "
                 f"{right_side}; they agree.")
    problem = rng.choice([f"Solve for x: {left} = {right}.", f"Find x if {left} = {right}.",
                          f"Solve the equation {left} = {right}."])
    return "linear equation", problem, steps, f"x = {fmt_frac(x)}"


def gen_fraction(rng):
    while True:
        q, s = rng.randint(2, 12), rng.randint(2, 12)
        p, r = rng.randint(1, 2 * q), rng.randint(1, 2 * s)
        if math.gcd(p, q) == 1 and math.gcd(r, s) == 1:
            break
    op = rng.choice("+-×÷")
    steps = []
    if op in "+-":
        lcd = q * s // math.gcd(q, s)
        n1, n2 = p * (lcd // q), r * (lcd // s)
        steps.append(f"The least common denominator of {q} and {s} is {lcd}.")
        steps.append(f"Rewrite: {p}/{q} = {n1}/{lcd} and {r}/{s} = {n2}/{lcd}.")
        num_, den = (n1 + n2 if op == "+" else n1 - n2), lcd
        steps.append(f"{'Add' if op == '+' else 'Subtract'} the numerators: {n1} {op} {n2} = {num_}, giving "
                     f"{num_}/{lcd}.")
    else:
        mr, ms = (s, r) if op == "÷" else (r, s)
        if op == "÷":
            steps.append(f"Dividing by {r}/{s} is the same as multiplying by its reciprocal {s}/{r}.")
        num_, den = p * mr, q * ms
        steps.append(f"Multiply the numerators and the denominators: ({p} × {mr})/({q} × {ms}) = {num_}/{den}.")
    g = math.gcd(num_, den)
    res_n, res_d = num_ // g, den // g
    if g > 1:
        steps.append(f"Divide the numerator and denominator by their greatest common divisor {g}: "
                     f"{res_n}/{res_d}.")
    if res_d == 1:
        steps.append(f"The denominator is 1, so the result is the whole number {res_n}.")
    elif abs(res_n) > res_d:
        whole = abs(res_n) // res_d
        steps.append(f"As a mixed number: {'-' if res_n < 0 else ''}{whole} {abs(res_n) - whole * res_d}/{res_d}.")
    a1, a2 = Fraction(p, q), Fraction(r, s)
    truth = {"+": a1 + a2, "-": a1 - a2, "×": a1 * a2, "÷": a1 / a2}[op]
    res = Fraction(res_n, res_d)
    check(res == truth and math.gcd(res_n, res_d) == 1, f"fraction {p}/{q} {op} {r}/{s} -> {res}")
    expr = f"{p}/{q} {op} {r}/{s}" if op in "+-" else f"({p}/{q}) {op} ({r}/{s})"
    problem = rng.choice([f"Compute {expr}. Give the answer in lowest terms.",
                          f"What is {expr}, in simplest form?"])
    return "fractions", problem, steps, fmt_frac(res)


def gen_percent(rng):
    v = rng.randrange(4)
    if v == 0:
        pct = Fraction(rng.choice(["5", "10", "12", "15", "20", "25", "30", "35", "40", "45", "50", "60", "75",
                                   "80", "120", "150", "2.5", "12.5", "37.5"]))
        n = rng.randint(2, 400) * rng.choice([1, 4, 8, 10])
        res = n * pct / 100
        steps = [f"{exact_decimal(pct)}% means {exact_decimal(pct)}/100 = {exact_decimal(pct / 100)}.",
                 f"Multiply: {exact_decimal(pct / 100)} × {n} = {exact_decimal(res)}."]
        check(res * 100 == pct * n and res / n * 100 == pct, f"percent of {pct} {n}")
        problem = f"What is {exact_decimal(pct)}% of {n}?"
        return "percentages", problem, steps, exact_decimal(res)
    if v == 1:
        price = rng.randint(8, 900)
        pct = rng.choice([5, 10, 15, 20, 25, 30, 35, 40, 50, 60, 70])
        item = rng.choice(["jacket", "bicycle", "lamp", "pair of boots", "backpack", "tent", "chair", "kettle"])
        disc = Fraction(price * pct, 100)
        sale = price - disc
        steps = [f"The discount is {pct}% of ${price}: {price} × {pct}/100 = ${exact_decimal(disc)}.",
                 f"Subtract it from the original price: {price} - {exact_decimal(disc)} = ${exact_decimal(sale)}."]
        check(sale == Fraction(price * (100 - pct), 100), f"discount {price} {pct}")
        steps.append(f"Check: paying {100 - pct}% of ${price} gives {price} × {100 - pct}/100 = "
                     f"${exact_decimal(Fraction(price * (100 - pct), 100))}.")
        problem = f"A {item} costs ${price}. It is on sale for {pct}% off. What is the sale price?"
        return "percentages", problem, steps, f"${round_half_up(sale, 2)}"
    if v == 2:
        a = 20 * rng.randint(2, 200)
        pct = 5 * rng.randint(-10, 30)
        if pct == 0:
            pct = 25
        b = a + a * pct // 100
        change = b - a
        steps = [f"The change is {b} - {a} = {change}.",
                 f"Divide by the starting value: {change}/{a} = {exact_decimal(Fraction(change, a))}.",
                 f"As a percentage: {exact_decimal(Fraction(change, a))} × 100 = {pct}%."]
        check(Fraction(change * 100, a) == pct and a * (100 + pct) == 100 * b, f"percent change {a} {b}")
        what = rng.choice(["The population of a town", "A company's monthly sales", "The number of visitors",
                           "The price of a ticket (in cents)"])
        problem = f"{what} went from {a} to {b}. What is the percentage change?"
        return "percentages", problem, steps, f"{abs(pct)}% {'increase' if pct > 0 else 'decrease'}"
    m = rng.randint(2, 60) * 20
    pct = rng.choice([5, 10, 15, 20, 25, 30, 40, 45, 50, 55, 60, 65, 75, 80, 85, 90, 95])
    n = m * pct // 100
    steps = [f"Divide the part by the whole: {n}/{m} = {exact_decimal(Fraction(n, m))}.",
             f"Multiply by 100: {exact_decimal(Fraction(n, m))} × 100 = {pct}%."]
    check(Fraction(n * 100, m) == pct, f"what percent {n} {m}")
    problem = rng.choice([f"{n} is what percent of {m}?",
                          f"In a class survey, {n} of {m} students chose walking. What percentage is that?"])
    return "percentages", problem, steps, f"{pct}%"


def hours_text(t):
    t = Fraction(t)
    h = math.floor(t)
    mins = (t - h) * 60
    parts = []
    if h:
        parts.append(f"{h} hour{'s' if h != 1 else ''}")
    if mins:
        parts.append(f"{fmt_frac(mins)} minute{'s' if mins != 1 else ''}")
    return " ".join(parts) or "0 hours"


def gen_rate(rng):
    v = rng.randrange(5)
    if v == 0:
        speed = rng.randint(8, 120)
        t = Fraction(rng.randint(2, 24), 4)
        dist = speed * t
        who = rng.choice(["A cyclist", "A train", "A car", "A runner", "A boat"])
        steps = [f"Distance = speed × time.", f"{t} hours is {exact_decimal(t)} hours.",
                 f"{speed} × {exact_decimal(t)} = {exact_decimal(dist)} km."]
        check(dist / t == speed, "distance")
        problem = f"{who} travels at {speed} km/h for {hours_text(t)}. How far does it go?"
        return "word problems", problem, steps, f"{exact_decimal(dist)} km"
    if v == 1:
        speed = rng.choice([40, 48, 50, 60, 64, 72, 80, 90, 96, 100, 120])
        t = Fraction(rng.randint(2, 20), 4)
        dist = speed * t
        steps = ["Time = distance ÷ speed.",
                 f"{exact_decimal(dist)} ÷ {speed} = {exact_decimal(t)} hours.",
                 f"{exact_decimal(t)} hours is {hours_text(t)}."]
        check(t * speed == dist, "travel time")
        problem = f"A train covers {exact_decimal(dist)} km at a steady {speed} km/h. How long does the trip take?"
        return "word problems", problem, steps, hours_text(t)
    if v == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        t = Fraction(a * b, a + b)
        steps = [f"Pipe A fills 1/{a} of the tank per hour and pipe B fills 1/{b}.",
                 f"Together: 1/{a} + 1/{b} = {b}/{a * b} + {a}/{a * b} = {fmt_frac(Fraction(a + b, a * b))} "
                 f"of the tank per hour.",
                 f"Time = 1 ÷ {fmt_frac(Fraction(a + b, a * b))} = {fmt_frac(t)} hours"
                 + (f" = {exact_decimal(t)} hours." if exact_decimal(t) and t.denominator != 1 else ".")]
        check(t * (Fraction(1, a) + Fraction(1, b)) == 1, "work rate")
        problem = (f"Pipe A can fill a tank in {a} hours and pipe B can fill it in {b} hours. How long does it "
                   f"take to fill the tank with both pipes open?")
        dec = exact_decimal(t)
        return "word problems", problem, steps, \
            f"{fmt_frac(t)} hours" + (f" ({dec} hours)" if dec and t.denominator != 1 else
                                      f" (about {round_half_up(t, 2)} hours)" if not dec else "")
    if v == 3:
        n = rng.randint(2, 12)
        unit = rng.randint(25, 2500)
        m = rng.randint(2, 30)
        item = rng.choice(["notebooks", "pencils", "apples", "tickets", "bolts", "mugs", "candles"])
        total = Fraction(n * unit, 100)
        each = total / n
        ans = each * m
        steps = [f"One costs ${exact_decimal(total)} ÷ {n} = ${round_half_up(each, 2)}.",
                 f"{m} cost {m} × ${round_half_up(each, 2)} = ${round_half_up(ans, 2)}."]
        check(ans * n == total * m, "unit price")
        problem = f"{n} {item} cost ${round_half_up(total, 2)}. At the same price each, how much do {m} cost?"
        return "word problems", problem, steps, f"${round_half_up(ans, 2)}"
    v1, v2 = rng.randint(20, 90), rng.randint(20, 90)
    if v1 == v2:
        v2 += 10
    d = v1 * v2 // math.gcd(v1, v2)  # any distance gives the same average; this one keeps the times whole
    t1, t2 = Fraction(d, v1), Fraction(d, v2)
    avg = Fraction(2 * d) / (t1 + t2)
    steps = [f"Take the one-way distance to be {d} km (any distance gives the same average).",
             f"Going takes {d}/{v1} = {fmt_frac(t1)} h; returning takes {d}/{v2} = {fmt_frac(t2)} h.",
             f"Average speed = total distance ÷ total time = {2 * d}/{fmt_frac(t1 + t2)} = {fmt_frac(avg)} km/h."]
    check(avg == Fraction(2 * v1 * v2, v1 + v2), "average speed")
    problem = (f"A car drives to a town at {v1} km/h and returns along the same road at {v2} km/h. What is its "
               f"average speed for the round trip?")
    dec = exact_decimal(avg)
    return "word problems", problem, steps, \
        f"{dec} km/h" if dec else f"{fmt_frac(avg)} km/h (about {round_half_up(avg, 2)} km/h)"


def gen_area(rng):
    v = rng.randrange(5)
    if v == 0:
        l, w = rng.randint(3, 60), rng.randint(2, 40)
        what = rng.choice(["garden", "room", "field", "parking lot", "playground"])
        steps = [f"Area = length × width = {l} × {w} = {l * w} square meters.",
                 f"Perimeter = 2 × (length + width) = 2 × ({l} + {w}) = {2 * (l + w)} meters."]
        check(sum(w for _ in range(l)) == l * w and l + w + l + w == 2 * (l + w), "rectangle")
        problem = f"A rectangular {what} is {l} m long and {w} m wide. Find its area and its perimeter."
        return "geometry", problem, steps, f"area {l * w} m², perimeter {2 * (l + w)} m"
    if v == 1:
        b, h = rng.randint(2, 50), rng.randint(2, 50)
        area = Fraction(b * h, 2)
        steps = [f"Area of a triangle = base × height ÷ 2.", f"{b} × {h} = {b * h}.",
                 f"{b * h} ÷ 2 = {exact_decimal(area)} square centimeters."]
        check(2 * area == b * h, "triangle")
        problem = f"A triangle has a base of {b} cm and a height of {h} cm. What is its area?"
        return "geometry", problem, steps, f"{exact_decimal(area)} cm²"
    if v == 2:
        L, W = rng.randint(6, 40), rng.randint(6, 40)
        a, b = rng.randint(1, L - 2), rng.randint(1, W - 2)
        area = L * W - a * b
        steps = [f"Think of the shape as a {L} m by {W} m rectangle with a {a} m by {b} m corner removed.",
                 f"Whole rectangle: {L} × {W} = {L * W} m².", f"Removed corner: {a} × {b} = {a * b} m².",
                 f"Area = {L * W} - {a * b} = {area} m².",
                 f"Check by cutting it into two rectangles instead: {L - a} × {W} + {a} × {W - b} = "
                 f"{(L - a) * W} + {a * (W - b)} = {(L - a) * W + a * (W - b)} m²."]
        check((L - a) * W + a * (W - b) == area, "L-shape")
        problem = (f"An L-shaped patio is a {L} m by {W} m rectangle with a {a} m by {b} m rectangle cut out of "
                   f"one corner. What is its area?")
        return "geometry", problem, steps, f"{area} m²"
    if v == 3:
        s = rng.choice([10, 20, 25, 30, 40, 50])
        nl, nw = rng.randint(4, 60), rng.randint(4, 60)
        lcm_, wcm = nl * s, nw * s
        tiles = (lcm_ // s) * (wcm // s)
        steps = [f"In centimeters the floor is {lcm_} cm by {wcm} cm.",
                 f"Tiles along the length: {lcm_} ÷ {s} = {nl}; along the width: {wcm} ÷ {s} = {nw}.",
                 f"Number of tiles: {nl} × {nw} = {tiles}."]
        check(tiles * s * s == lcm_ * wcm, "tiles")
        problem = (f"A floor measures {exact_decimal(Fraction(lcm_, 100))} m by {exact_decimal(Fraction(wcm, 100))} m. "
                   f"How many square tiles {s} cm on a side are needed to cover it?")
        return "geometry", problem, steps, str(tiles)
    a, b, h = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 20)
    if a == b:
        b += rng.randint(1, 9)
    area = Fraction((a + b) * h, 2)
    steps = ["Area of a trapezoid = (sum of the parallel sides) ÷ 2 × height.",
             f"({a} + {b}) ÷ 2 = {exact_decimal(Fraction(a + b, 2))}.",
             f"{exact_decimal(Fraction(a + b, 2))} × {h} = {exact_decimal(area)} square meters."]
    check(area == Fraction(min(a, b) * h) + Fraction(abs(a - b) * h, 2), "trapezoid")
    problem = f"A trapezoid has parallel sides of {a} m and {b} m and a height of {h} m. Find its area."
    return "geometry", problem, steps, f"{exact_decimal(area)} m²"


def gen_gcd_lcm(rng):
    g = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15, 18, 21, 24, 25])
    a, b = g * rng.randint(2, 90), g * rng.randint(2, 90)
    if a == b:
        b += g
    if a < b:
        a, b = b, a
    steps = ["Use the Euclidean algorithm: replace the pair by (smaller, remainder) until the remainder is 0."]
    x, y = a, b
    while y:
        q, r = divmod(x, y)
        steps.append(f"{x} = {q} × {y} + {r}.")
        x, y = y, r
    gcd = x
    lcm = a // gcd * b
    steps.append(f"The last nonzero remainder is {gcd}, so gcd({a}, {b}) = {gcd}.")
    steps.append(f"lcm({a}, {b}) = {a} × {b} ÷ {gcd} = {lcm}.")
    check(gcd == math.gcd(a, b) and a % gcd == 0 and b % gcd == 0, f"gcd {a} {b}")
    check(lcm % a == 0 and lcm % b == 0 and math.gcd(lcm // a, lcm // b) == 1, f"lcm {a} {b}")
    problem = rng.choice([f"Find the greatest common divisor and the least common multiple of {a} and {b}.",
                          f"What are gcd({a}, {b}) and lcm({a}, {b})?"])
    return "gcd and lcm", problem, steps, f"gcd = {gcd}, lcm = {lcm}"


WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def gen_modular(rng):
    v = rng.randrange(4)
    if v == 0:
        a, e, m = rng.randint(2, 60), rng.randint(10, 300), rng.randint(7, 97)
        bits = bin(e)[2:]
        powers = [k for k, bit in enumerate(reversed(bits)) if bit == "1"]
        steps = [f"Write the exponent in binary: {e} = " + " + ".join(str(2**k) for k in reversed(powers)) + "."]
        sq = a % m
        table = {0: sq}
        steps.append(f"{a}^1 ≡ {sq} (mod {m}).")
        for k in range(1, len(bits)):
            nxt = sq * sq % m
            steps.append(f"{a}^{2**k} ≡ {sq}^2 = {sq * sq} ≡ {nxt} (mod {m}).")
            sq = nxt
            table[k] = sq
        acc = 1
        for k in powers:
            acc = acc * table[k] % m
        picked = " × ".join(str(table[k]) for k in reversed(powers))
        steps.append(f"Multiply the needed powers: {picked} ≡ {acc} (mod {m}).")
        check(acc == pow(a, e, m), f"modpow {a} {e} {m}")
        problem = f"Compute {a}^{e} mod {m}."
        return "modular arithmetic", problem, steps, str(acc)
    if v == 1:
        a, b, m = rng.randint(1000, 999_999), rng.randint(1000, 999_999), rng.randint(3, 50)
        ra, rb = a % m, b % m
        res = ra * rb % m
        steps = [f"{a} mod {m} = {ra}, since {a} = {a // m} × {m} + {ra}.",
                 f"{b} mod {m} = {rb}, since {b} = {b // m} × {m} + {rb}.",
                 f"Multiply the remainders: {ra} × {rb} = {ra * rb}, and {ra * rb} mod {m} = {res}."]
        check(res == (a * b) % m, "product mod")
        problem = f"What is the remainder when {a} × {b} is divided by {m}?"
        return "modular arithmetic", problem, steps, str(res)
    if v == 2:
        start = rng.randrange(7)
        n = rng.randint(10, 2000)
        end = (start + n) % 7
        steps = [f"The days of the week repeat every 7 days, so only {n} mod 7 matters.",
                 f"{n} = {n // 7} × 7 + {n % 7}.",
                 f"{n % 7} day{'s' if n % 7 != 1 else ''} after {WEEKDAYS[start]} is {WEEKDAYS[end]}."]
        base = datetime.date(2024, 1, 1) + datetime.timedelta(days=start)  # 2024-01-01 was a Monday
        check(base.weekday() == start and (base + datetime.timedelta(days=n)).weekday() == end, "weekday")
        problem = f"Today is {WEEKDAYS[start]}. What day of the week will it be {n} days from now?"
        return "modular arithmetic", problem, steps, WEEKDAYS[end]
    m = rng.choice([7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47])
    a, b = rng.randint(2, m - 1), rng.randint(1, m - 1)
    # extended Euclid for the inverse of a mod m
    r0, r1, s0, s1 = m, a, 0, 1
    steps = [f"Find the inverse of {a} modulo {m} with the extended Euclidean algorithm."]
    while r1:
        q = r0 // r1
        steps.append(f"{r0} = {q} × {r1} + {r0 - q * r1}.")
        r0, r1, s0, s1 = r1, r0 - q * r1, s1, s0 - q * s1
    inv = s0 % m
    steps.append(f"Working back gives {a} × {inv} = {a * inv} = {a * inv // m} × {m} + 1, so {a}^(-1) ≡ {inv} "
                 f"(mod {m}).")
    x = inv * b % m
    steps.append(f"Multiply both sides by {inv}: x ≡ {inv} × {b} = {inv * b} ≡ {x} (mod {m}).")
    steps.append(f"Check: {a} × {x} = {a * x} = {a * x // m} × {m} + {a * x % m}.")
    check(a * inv % m == 1 and (a * x - b) % m == 0 and 0 <= x < m, f"congruence {a} {b} {m}")
    problem = f"Solve {a}x ≡ {b} (mod {m}) for x in 0..{m - 1}."
    return "modular arithmetic", problem, steps, f"x = {x}"


def poly2(a, b, c):
    s = "x^2" if a == 1 else "-x^2" if a == -1 else f"{a}x^2"
    for coef, var in ((b, "x"), (c, "")):
        if coef:
            mag = abs(coef)
            s += (" + " if coef > 0 else " - ") + (var if mag == 1 and var else f"{mag}{var}")
    return s


def factor_text(r):
    return "x" if r == 0 else f"(x - {r})" if r > 0 else f"(x + {-r})"


def gen_quadratic(rng):
    r1, r2 = rng.randint(-12, 12), rng.randint(-12, 12)
    k = rng.choice([1, 1, 1, 1, 2, 3, -1, -2])
    b, c = -k * (r1 + r2), k * r1 * r2
    eq = f"{poly2(k, b, c)} = 0"
    steps = []
    if k != 1:
        steps.append(f"Divide every term by {k}: {poly2(1, b // k, c // k)} = 0.")
    p, s = c // k, b // k
    steps.append(f"Look for two numbers whose product is {p} and whose sum is {s}: {-r1} and {-r2}.")
    steps.append(f"So the equation factors as {factor_text(r1)}{factor_text(r2)} = 0.")
    roots = sorted({r1, r2})
    steps.append("Setting each factor to zero gives " + " or ".join(f"x = {r}" for r in roots) + ".")
    disc = b * b - 4 * k * c
    sd = math.isqrt(disc)
    f1, f2 = Fraction(-b - sd, 2 * k), Fraction(-b + sd, 2 * k)
    steps.append(f"Check with the quadratic formula: the discriminant is {paren(b)}^2 - 4·{paren(k)}·{paren(c)} "
                 f"= {disc}, its square root is {sd}, and ({-b} ± {sd}) / {paren(2 * k)} gives {fmt_frac(min(f1, f2))} "
                 f"and {fmt_frac(max(f1, f2))}.")
    check(all(k * r * r + b * r + c == 0 for r in (r1, r2)) and sd * sd == disc and
          sorted({f1, f2}) == [Fraction(r) for r in roots], f"quadratic {eq}")
    problem = rng.choice([f"Solve {eq}.", f"Find all real solutions of {eq}.", f"Solve for x: {eq}."])
    answer = f"x = {roots[0]} (a double root)" if len(roots) == 1 else f"x = {roots[0]} or x = {roots[1]}"
    return "quadratic equation", problem, steps, answer


def gen_system(rng):
    while True:
        a1, b1, a2, b2 = (rng.choice([i for i in range(-7, 8) if i]) for _ in range(4))
        if a1 * b2 - a2 * b1:
            break
    x, y = rng.randint(-10, 10), rng.randint(-10, 10)
    c1, c2 = a1 * x + b1 * y, a2 * x + b2 * y

    def eqn(a, b, c):
        return f"{lin(a, 0)} {'+' if b > 0 else '-'} {lin(abs(b), 0, 'y')} = {c}"


    e1, e2 = eqn(a1, b1, c1), eqn(a2, b2, c2)
    steps = [f"Multiply the first equation by {a2} and the second by {a1} so x has the same coefficient:",
             f"{eqn(a1 * a2, b1 * a2, c1 * a2)} and {eqn(a1 * a2, b2 * a1, c2 * a1)}.",
             f"Subtract the second from the first: {b1 * a2 - b2 * a1}y = {c1 * a2 - c2 * a1}."]
    yy = Fraction(c1 * a2 - c2 * a1, b1 * a2 - b2 * a1)
    steps.append(f"So y = {fmt_frac(yy)}.")
    xx = Fraction(c1 - b1 * yy, a1)
    steps.append(f"Substitute into the first equation: {lin(a1, 0)} {'+' if b1 > 0 else '-'} "
                 f"{abs(b1)}·{paren(yy)} = {c1}, so {lin(a1, 0)} = {fmt_frac(c1 - b1 * yy)} and x = {fmt_frac(xx)}.")
    steps.append(f"Check in the second equation: {combo([(a2, xx), (b2, yy)])} = {fmt_frac(a2 * xx + b2 * yy)}.")
    det = a1 * b2 - a2 * b1
    check(xx == x and yy == y and a2 * xx + b2 * yy == c2 and
          Fraction(c1 * b2 - c2 * b1, det) == x and Fraction(a1 * c2 - a2 * c1, det) == y, f"system {e1}; {e2}")
    problem = f"Solve the system of equations: {e1} and {e2}."
    return "linear system", problem, steps, f"x = {x}, y = {y}"


def gen_series(rng):
    if rng.randrange(2):
        a, d, n = rng.randint(-20, 50), rng.randint(1, 15), rng.randint(5, 80)
        last = a + (n - 1) * d
        total = n * (a + last) // 2
        steps = [f"The last term is {a} + ({n} - 1) × {d} = {last}.",
                 f"The sum of an arithmetic sequence is (number of terms) × (first + last) ÷ 2.",
                 f"{n} × ({a} + {last}) ÷ 2 = {n} × {a + last} ÷ 2 = {total}."]
        check(total == sum(a + i * d for i in range(n)) and n * (a + last) % 2 == 0, "series")
        terms = ", ".join(str(a + i * d) for i in range(3))
        problem = f"Find the sum of the first {n} terms of the arithmetic sequence {terms}, ..."
        return "series", problem, steps, str(total)
    k, N = rng.randint(2, 13), rng.randint(50, 2000)
    cnt = N // k
    last = cnt * k
    total = cnt * (k + last) // 2
    steps = [f"The multiples of {k} up to {N} are {k}, {2 * k}, ..., {last}: {N} ÷ {k} = {cnt} of them "
             f"(rounded down).",
             f"Their sum is {cnt} × ({k} + {last}) ÷ 2 = {total}."]
    check(total == sum(range(k, N + 1, k)), "multiples")
    problem = f"What is the sum of all positive multiples of {k} that are at most {N}?"
    return "series", problem, steps, str(total)


MATH_GENERATORS = [gen_addition, gen_subtraction, gen_multiplication, gen_division, gen_linear, gen_fraction,
                   gen_percent, gen_rate, gen_area, gen_gcd_lcm, gen_modular, gen_quadratic, gen_system,
                   gen_series]


def math_documents(n, rng):
    docs, kinds = [], {}
    for i in range(n):
        kind, problem, steps, answer = MATH_GENERATORS[i % len(MATH_GENERATORS)](rng)
        check(answer and "\n" not in answer, f"empty answer for {problem}")
        docs.append({"text": f"Problem: {problem}\n\nSolution:\n" + "\n".join(steps) + f"\n\nAnswer: {answer}"})
        kinds[kind] = kinds.get(kind, 0) + 1
    return docs, kinds


# ---------------------------------------------------------------------------------------------------
# stem (b): real source code from this machine

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings",
             "pydoc_data", "_bundled", "lib2to3", "turtledemo"}


def source_candidates(root, suffix, skip_dirs, label):
    out = []
    if not root or not os.path.isdir(root):
        return out
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs and not d.startswith("config-")
                         and not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(files):
            if not name.endswith(suffix):
                continue
            p = os.path.join(dirpath, name)
            try:
                size = os.stat(p).st_size
            except OSError:
                continue
            if 1024 <= size <= 64 * 1024 and os.path.isfile(p):
                out.append((label(os.path.relpath(p, root)), p, size))
    # a stable spread: order by a hash of the shown path rather than alphabetically
    out.sort(key=lambda c: (hashlib.sha256(c[0].encode("utf-8")).hexdigest(), c[0]))
    return out


def take_sources(cands, budget, header):
    docs, total = [], 0
    for shown, path, size in cands:
        if total >= budget * 0.97:
            break
        if total + size > budget:
            continue
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "\x00" in text or not text.strip():
            continue
        text = text.replace("\r\n", "\n")
        docs.append({"text": header(shown) + "\n" + text})
        total += size
    return docs, total


def code_documents(budget):
    stdlib = sysconfig.get_paths().get("stdlib")
    tag = "lib/" + os.path.basename(os.path.normpath(stdlib)) if stdlib else ""
    py = source_candidates(stdlib, ".py", SKIP_DIRS, lambda rel: f"{tag}/{rel}")
    hdr = source_candidates("/usr/include", ".h", set(), lambda rel: f"/usr/include/{rel}")
    py_budget = budget * (0.7 if hdr else 1.0)
    py_docs, py_bytes = take_sources(py, py_budget, lambda s: f"# path: {s}")
    h_docs, h_bytes = take_sources(hdr, budget - py_bytes, lambda s: f"/* path: {s} */")
    desc = (f"{len(py_docs)} Python standard library modules from {tag or '(none found)'} "
            f"({py_bytes} bytes), {len(h_docs)} C headers from /usr/include ({h_bytes} bytes); files of "
            f"1-64 KiB, tests and data-table modules left out, chosen in sha256(path) order up to the budget; "
            f"first line a comment naming the path")
    return py_docs, h_docs, desc


def build_stem(scale):
    rng = random.Random("loom-corpora/stem")
    math_docs, kinds = math_documents(scaled(BASE_MATH_PROBLEMS, scale, minimum=len(MATH_GENERATORS)), rng)
    py_docs, h_docs, code_desc = code_documents(BASE_CODE_BYTES * scale)
    # held-out: every 20th math problem and every 20th code file, so both kinds are in both splits; each
    # split then shuffled with a fixed seed
    unique_math = dedupe(math_docs)
    m_train, m_held = split_heldout(unique_math)
    c_train, c_held = split_heldout(dedupe(py_docs + h_docs))
    train, held = m_train + c_train, m_held + c_held
    rng.shuffle(train)
    rng.shuffle(held)
    desc = (f"{len(unique_math)} generated math problems ({len(math_docs)} drawn, repeats dropped; " +
            ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) +
            "), each `Problem:` / `Solution:` steps / `Answer:`, every answer checked by recomputation; " +
            code_desc + "; held-out takes every 20th math problem and every 20th code file; math and code "
            "shuffled together with a fixed seed")
    return train, held, desc


# ---------------------------------------------------------------------------------------------------
# agentic: simulated tools


class ToolError(Exception):
    pass


ARITH_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
             ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: Fraction(a // b),
             ast.Mod: lambda a, b: a % b}


def safe_eval(expr, functions):
    """Exact arithmetic on decimals (Fractions) over an AST whitelist; `functions` names the callables."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise ToolError(f"could not parse {expr!r}: write numbers with + - * / // % ** and parentheses")

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(repr(node.value)) if isinstance(node.value, float) else Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):
                base, exp = ev(node.left), ev(node.right)
                if exp.denominator != 1 or abs(exp) > 64:
                    raise ToolError("only whole-number exponents up to 64 are supported")
                if base == 0 and exp < 0:
                    raise ToolError("division by zero")
                return base ** int(exp)
            op = ARITH_OPS.get(type(node.op))
            if op is None:
                sym = {ast.BitXor: "^", ast.BitAnd: "&", ast.BitOr: "|", ast.MatMult: "@"}.get(type(node.op), "?")
                raise ToolError(f"unsupported operator {sym!r}" + ("; use ** for powers" if sym == "^" else ""))
            left, right = ev(node.left), ev(node.right)
            if isinstance(left, list) or isinstance(right, list):
                raise ToolError("arithmetic on a list is not supported")
            if right == 0 and not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
                raise ToolError("division by zero")
            return op(left, right)
        if isinstance(node, (ast.List, ast.Tuple)) and functions:  # python_eval only
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            name = node.func.id
            if name not in functions:
                raise ToolError(f"unknown function {name!r}; allowed: {', '.join(sorted(functions))}" if functions
                                else "function calls are not supported; write plain arithmetic")
            return functions[name](*[ev(a) for a in node.args])
        if isinstance(node, ast.Name):
            raise ToolError(f"unknown name {node.id!r}: only numbers"
                            + (f" and the functions {', '.join(sorted(functions))}" if functions else "")
                            + " are allowed")
        raise ToolError(f"unsupported syntax in {expr!r}")

    return ev(tree)


def _round(x, nd=0):
    if isinstance(x, list) or (isinstance(nd, Fraction) and nd.denominator != 1):
        raise ToolError("round expects a number and a whole number of digits")
    return Fraction(round(x, int(nd)))


def _agg(name, f):
    def g(*args):
        vals = args[0] if len(args) == 1 and isinstance(args[0], list) else list(args)
        if not vals or any(isinstance(v, list) for v in vals):
            raise ToolError(f"{name} expects numbers or one non-empty list of numbers")
        return f(vals)
    return g


def _len(v):
    if not isinstance(v, list):
        raise ToolError("len expects a list")
    return Fraction(len(v))


def _abs(x):
    if isinstance(x, list):
        raise ToolError("abs expects a number")
    return abs(x)


PY_FUNCS = {"sum": _agg("sum", lambda v: sum(v, Fraction(0))), "min": _agg("min", min), "max": _agg("max", max),
            "abs": _abs, "round": _round, "len": _len}

UNITS = {  # unit -> (dimension, factor to the base unit)
    "m": ("length", Fraction(1)), "km": ("length", Fraction(1000)), "mi": ("length", Fraction("1609.344")),
    "ft": ("length", Fraction("0.3048")), "g": ("mass", Fraction(1, 1000)), "kg": ("mass", Fraction(1)),
    "lb": ("mass", Fraction("0.45359237")), "oz": ("mass", Fraction("0.028349523125")),
    "L": ("volume", Fraction(1)), "mL": ("volume", Fraction(1, 1000)), "gal": ("volume", Fraction("3.785411784")),
    "C": ("temperature", None), "F": ("temperature", None), "K": ("temperature", None),
}


def convert_temperature(v, f, t):
    c = v if f == "C" else (v - 32) * Fraction(5, 9) if f == "F" else v - Fraction("273.15")
    return c if t == "C" else c * Fraction(9, 5) + 32 if t == "F" else c + Fraction("273.15")


DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class Tools:
    """The simulated tools: deterministic functions of their arguments and the generated tables."""

    DESCRIPTIONS = {
        "calculator": "calculator(expression: string): evaluates an arithmetic expression with + - * / // % ** "
                      "and parentheses, exactly; returns {\"result\": \"...\"}.",
        "search_table": "search_table(table: string, key: string): returns the row of a table whose name "
                        "matches key exactly. Tables: city_population (name, region, population, area_km2), "
                        "product_prices (name, price_usd, weight_kg).",
        "python_eval": "python_eval(code: string): evaluates one Python expression limited to arithmetic, "
                       "lists, and sum, min, max, abs, round, len; returns {\"result\": \"...\"}.",
        "unit_convert": "unit_convert(value: number, from_unit: string, to_unit: string): converts between m, "
                        "km, mi, ft; g, kg, lb, oz; mL, L, gal; C, F, K.",
        "calendar_days_between": "calendar_days_between(start: string, end: string): the number of days from "
                                 "start to end, dates as YYYY-MM-DD; negative when end is earlier.",
    }

    def __init__(self, rng):
        self.tables = {"city_population": {}, "product_prices": {}}
        first = ["Al", "Bel", "Cor", "Dun", "El", "Fen", "Gal", "Har", "Is", "Jor", "Kel", "Lin", "Mar", "Nor",
                 "Os", "Pel", "Quin", "Ros", "Sel", "Tor", "Ul", "Val", "Wes", "Yar", "Zan", "Brim", "Cal", "Dra"]
        mid = ["", "", "a", "e", "i", "o", "ber", "den", "mar", "ran", "wyn", "les", "the"]
        end = ["ford", "haven", "mouth", "ton", "wick", "burg", "dale", "field", "port", "stead", "more", "by",
               "gate", "holm", "bridge"]
        regions = ["North March", "Eastvale", "the Coast", "the Lowlands", "Highmoor", "the Riverlands",
                   "Westreach", "the Islands"]
        names = set()
        while len(names) < 90:
            names.add(rng.choice(first) + rng.choice(mid) + rng.choice(end))
        for n in sorted(names):
            self.tables["city_population"][n] = {
                "name": n, "region": rng.choice(regions), "population": rng.randint(8_000, 3_200_000),
                "area_km2": float(Fraction(rng.randint(150, 12_000), 10))}
        products = ["notebook", "desk lamp", "coffee mug", "backpack", "water bottle", "wool scarf",
                    "umbrella", "stapler", "headphones", "kettle", "frying pan", "cutting board", "tea towel",
                    "flashlight", "batteries (4-pack)", "extension cord", "bike helmet", "yoga mat", "blender",
                    "toaster", "doormat", "alarm clock", "picture frame", "pillow", "bath towel", "hammer",
                    "screwdriver set", "tape measure", "garden hose", "watering can", "flower pot", "candle",
                    "board game", "jigsaw puzzle", "tennis balls", "football", "rain jacket", "gloves",
                    "sunglasses", "wall clock", "mixing bowl", "whisk", "rolling pin", "bread knife", "ladder"]
        for p in sorted(products):
            self.tables["product_prices"][p] = {
                "name": p, "price_usd": float(Fraction(rng.randint(99, 15_999), 100)),
                "weight_kg": float(Fraction(rng.randint(5, 9_000), 1000))}
        self.city_names = sorted(self.tables["city_population"])
        self.product_names = sorted(self.tables["product_prices"])

    def run(self, name, args):
        try:
            fn = getattr(self, "t_" + name, None)
            if fn is None:
                raise ToolError(f"unknown tool {name!r}")
            return fn(**args)
        except ToolError as e:
            return {"error": str(e)}
        except TypeError:
            return {"error": f"bad arguments for {name}: {', '.join(sorted(args))}"}

    def t_calculator(self, expression):
        v = safe_eval(str(expression), {})
        return {"result": fmt_num(v)}

    def t_python_eval(self, code):
        v = safe_eval(str(code), PY_FUNCS)
        if isinstance(v, list):
            return {"result": "[" + ", ".join(fmt_num(x) for x in v) + "]"}
        return {"result": fmt_num(v)}

    def t_search_table(self, table, key):
        if table not in self.tables:
            raise ToolError(f"no table {table!r}; tables: {', '.join(sorted(self.tables))}")
        rows = self.tables[table]
        if key not in rows:
            close = difflib.get_close_matches(str(key), sorted(rows), n=1, cutoff=0.6)
            raise ToolError(f"no row with name {key!r} in {table}" + (f"; did you mean {close[0]!r}?" if close else ""))
        return dict(rows[key])

    def t_unit_convert(self, value, from_unit, to_unit):
        for u in (from_unit, to_unit):
            if u not in UNITS:
                raise ToolError(f"unknown unit {u!r}; supported: {', '.join(UNITS)}")
        if UNITS[from_unit][0] != UNITS[to_unit][0]:
            raise ToolError(f"cannot convert {UNITS[from_unit][0]} ({from_unit}) to {UNITS[to_unit][0]} ({to_unit})")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ToolError("value must be a number")
        v = num(value)
        if UNITS[from_unit][0] == "temperature":
            out = convert_temperature(v, from_unit, to_unit)
        else:
            out = v * UNITS[from_unit][1] / UNITS[to_unit][1]
        return {"value": fmt_num(out), "unit": to_unit}

    def t_calendar_days_between(self, start, end):
        ds = []
        for s in (start, end):
            if not isinstance(s, str) or not DATE_RE.match(s):
                raise ToolError(f"dates must be written YYYY-MM-DD, got {s!r}")
            try:
                ds.append(datetime.date.fromisoformat(s))
            except ValueError:
                raise ToolError(f"{s!r} is not a valid date")
        return {"days": (ds[1] - ds[0]).days}


SYSTEM_INTROS = [
    "You are a careful assistant that solves tasks step by step with tools.",
    "You are a helpful assistant with access to tools. Use them instead of guessing.",
    "You solve problems by planning, calling tools, and checking the results.",
]


class Trajectory:
    def __init__(self, tools, rng, needed, user):
        extra = [t for t in sorted(Tools.DESCRIPTIONS) if t not in needed and rng.random() < 0.5]
        names = sorted(set(needed) | set(extra))
        system = (rng.choice(SYSTEM_INTROS) + "\n\nTools:\n" +
                  "\n".join("- " + Tools.DESCRIPTIONS[n] for n in names) +
                  "\n\nThink inside <think>...</think>. Call one tool at a time as "
                  "<tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>; its result comes back as "
                  "<observation>...</observation>. Finish with a line \"Answer: ...\".")
        self.tools = tools
        self.segments = [{"role": "system", "text": system}, {"role": "user", "text": user}]
        self.calls = 0
        self.errors = 0

    def call(self, think, name, arguments):
        call = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        self.segments.append({"role": "assistant", "text": f"<think>{think}</think>\n<tool_call>{call}</tool_call>"})
        obs = json.dumps(self.tools.run(name, arguments), ensure_ascii=False)
        self.segments.append({"role": "tool", "text": f"<observation>{obs}</observation>"})
        self.calls += 1
        result = json.loads(obs)  # what the model reads back
        if "error" in result:
            self.errors += 1
        return result

    def answer(self, think, text, answer):
        self.segments.append({"role": "assistant", "text": f"<think>{think}</think>\n{text}\nAnswer: {answer}"})


def sentence(msg):
    return msg if msg.endswith((".", "?", "!")) else msg + "."


def misspell(rng, name, valid):
    for _ in range(50):
        v = rng.randrange(3)
        if v == 0 and len(name) > 4:
            i = rng.randrange(1, len(name) - 1)
            bad = name[:i] + name[i + 1:]
        elif v == 1 and len(name) > 3:
            i = rng.randrange(1, len(name) - 2)
            bad = name[:i] + name[i + 1] + name[i] + name[i + 2:]
        else:
            bad = name.lower() if name != name.lower() else name.title()
        if bad != name and bad not in valid:
            return bad
    return name + "s"


def lookup(t, rng, table, key, think, recover, valid):
    """search_table, with an optional first failed attempt (a typo, or the wrong table name) and a retry."""
    if recover:
        if rng.randrange(2):
            bad = misspell(rng, key, valid)
            obs = t.call(think, "search_table", {"table": table, "key": bad})
            check("error" in obs, "misspelled lookup should fail")
            think = (f"The lookup failed: {sentence(obs['error'])} I misspelled the name; the row is \"{key}\", so I will "
                     f"retry with the exact spelling.")
        else:
            wrong = {"city_population": "cities", "product_prices": "products"}[table]
            obs = t.call(think, "search_table", {"table": wrong, "key": key})
            check("error" in obs, "wrong table should fail")
            think = f"That table name was wrong: {sentence(obs['error'])} I will use {table} instead."
    obs = t.call(think, "search_table", {"table": table, "key": key})
    check("error" not in obs and obs["name"] == key, f"lookup {table} {key}")
    return obs


def calc(t, rng, think, expr, recover, tool="calculator"):
    """calculator / python_eval, with an optional first attempt in a syntax the tool rejects."""
    arg = "expression" if tool == "calculator" else "code"
    if recover and "*" in expr:
        bad = expr.replace("*", rng.choice([" x ", "×"]), 1) if "**" not in expr else expr.replace("**", "^", 1)
        obs = t.call(think, tool, {arg: bad})
        check("error" in obs, f"bad expression {bad!r} should fail")
        think = f"The tool rejected the expression: {sentence(obs['error'])} I will write it with Python operators."
    obs = t.call(think, tool, {arg: expr})
    check("error" not in obs, f"{tool} {expr}: {obs}")
    return obs["result"]


def money(q):
    return f"${round_half_up(Fraction(q), 2):,}"


def and_list(xs):
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + (", and " if len(xs) > 2 else " and ") + xs[-1]


# Each task: (rng, tools, recover) -> (trajectory, answer the trajectory reached, ground truth computed from
# the tables and task parameters directly). build_agentic checks the two agree.


def task_city_sum(rng, T, recover):
    k = rng.randint(2, 4)
    names = rng.sample(T.city_names, k)
    truth = fmt_int(sum(T.tables["city_population"][n]["population"] for n in names))
    user = rng.choice([f"What is the combined population of {and_list(names)}?",
                       f"I need the total number of people living in {and_list(names)}, all together."])
    t = Trajectory(T, rng, ["search_table", "calculator"], user)
    think = (f"Plan: look up the population of each of the {k} cities in city_population, add them with the "
             f"calculator, and report the total. First, {names[0]}.")
    pops = []
    for i, n in enumerate(names):
        obs = lookup(t, rng, "city_population", n, think, recover and i == 0, T.city_names)
        pops.append(obs["population"])
        think = (f"{n} has {fmt_int(obs['population'])} people." +
                 (f" Next, {names[i + 1]}." if i + 1 < k else " I have all the populations; now add them."))
    res = calc(t, rng, think, " + ".join(str(p) for p in pops), False)
    ans = fmt_int(int(res))
    t.answer(f"The calculator returned {res}. That is larger than each single population and I added all {k} "
             f"cities, so it is plausible.", f"Together, {and_list(names)} have {ans} inhabitants.", ans)
    return t, ans, truth


def task_city_compare(rng, T, recover):
    while True:
        a, b = rng.sample(T.city_names, 2)
        pa, pb = (T.tables["city_population"][n]["population"] for n in (a, b))
        if pa < pb:
            a, b, pa, pb = b, a, pb, pa
        pct = Fraction(pa - pb, pb) * 100
        if pa != pb and not near_boundary(pct, 1):
            break
    truth = f"{fmt_int(pa - pb)} more people, {round_half_up(pct, 1)}% larger"
    user = (f"How many more people live in {a} than in {b}? And by what percentage is {a}'s population larger "
            f"than {b}'s (one decimal place)?")
    t = Trajectory(T, rng, ["search_table", "calculator", "python_eval"], user)
    o1 = lookup(t, rng, "city_population", a,
                f"Plan: look up both populations, subtract them, then compute the difference as a percentage of "
                f"{b}'s population. Start with {a}.", recover, T.city_names)
    o2 = lookup(t, rng, "city_population", b, f"{a}: {fmt_int(o1['population'])}. Now {b}.", False, T.city_names)
    diff = calc(t, rng, f"{b}: {fmt_int(o2['population'])}. The difference is {a} minus {b}.",
                f"{o1['population']} - {o2['population']}", False)
    pct_s = calc(t, rng, f"The difference is {fmt_int(int(diff))}. As a percentage of {b}'s population, rounded to "
                         f"one decimal:", f"round({diff} / {o2['population']} * 100, 1)", False, tool="python_eval")
    ans = f"{fmt_int(int(diff))} more people, {Decimal(pct_s).quantize(Decimal('0.1'))}% larger"
    t.answer(f"{diff} more people, which is {pct_s}% of {b}'s {fmt_int(o2['population'])}. The percentage is "
             f"positive, consistent with {a} being larger.",
             f"{a} has {fmt_int(int(diff))} more residents than {b}, a population about "
             f"{Decimal(pct_s).quantize(Decimal('0.1'))}% larger.", ans)
    return t, ans, truth


def task_city_density(rng, T, recover):
    while True:
        a, b = rng.sample(T.city_names, 2)
        rows = [T.tables["city_population"][n] for n in (a, b)]
        dens = [Fraction(r["population"]) / num(r["area_km2"]) for r in rows]
        if dens[0] != dens[1] and not any(near_boundary(d, 1) for d in dens) \
                and round_half_up(dens[0], 1) != round_half_up(dens[1], 1):
            break
    hi = 0 if dens[0] > dens[1] else 1
    truth = f"{(a, b)[hi]}, {round_half_up(dens[hi], 1)} people per km²"
    user = (f"Which city is more densely populated, {a} or {b}? Give its density in people per square kilometer, "
            f"to one decimal place.")
    t = Trajectory(T, rng, ["search_table", "python_eval"], user)
    o1 = lookup(t, rng, "city_population", a, "Plan: get population and area for both cities, divide to get "
                f"densities, and compare. First {a}.", recover, T.city_names)
    o2 = lookup(t, rng, "city_population", b, f"{a}: {fmt_int(o1['population'])} people on {o1['area_km2']} km². "
                f"Now {b}.", False, T.city_names)
    d1 = calc(t, rng, f"{b}: {fmt_int(o2['population'])} people on {o2['area_km2']} km². Density of {a} first.",
              f"round({o1['population']} / {o1['area_km2']}, 1)", False, tool="python_eval")
    d2 = calc(t, rng, f"{a}: {d1} people per km². Now {b}.", f"round({o2['population']} / {o2['area_km2']}, 1)",
              False, tool="python_eval")
    win = a if num(d1) > num(d2) else b
    wd = d1 if win == a else d2
    ans = f"{win}, {Decimal(wd).quantize(Decimal('0.1'))} people per km²"
    t.answer(f"{a}: {d1}, {b}: {d2} people per km². {win} has the higher density.",
             f"{win} is more densely populated, with about {Decimal(wd).quantize(Decimal('0.1'))} people per km².",
             ans)
    return t, ans, truth


def task_shopping(rng, T, recover):
    while True:
        k = rng.randint(2, 3)
        items = rng.sample(T.product_names, k)
        qty = [rng.randint(1, 6) for _ in items]
        pct = rng.choice([0, 5, 10, 15, 20, 25, 30])
        subtotal = sum(q * num(T.tables["product_prices"][n]["price_usd"]) for q, n in zip(qty, items))
        total = subtotal * (100 - pct) / 100
        if not near_boundary(total, 2):
            break
    truth = money(total)
    order = and_list([f"{q} × {n}" for q, n in zip(qty, items)])
    user = (f"I want to buy {order}." + (f" The shop gives {pct}% off the whole order." if pct else "") +
            " How much will I pay in total?")
    t = Trajectory(T, rng, ["search_table", "calculator", "python_eval"], user)
    think = f"Plan: look up the price of each product, add up quantity × price" + \
            (f", then take {pct}% off." if pct else ".") + f" First, {items[0]}."
    prices = []
    for i, n in enumerate(items):
        obs = lookup(t, rng, "product_prices", n, think, recover and i == 0, T.product_names)
        prices.append(obs["price_usd"])
        think = f"{n}: ${obs['price_usd']} each." + (f" Next, {items[i + 1]}." if i + 1 < k else
                                                            " Now the subtotal.")
    expr = " + ".join(f"{q} * {p!r}" for q, p in zip(qty, prices))
    sub = calc(t, rng, think, expr, False)
    if pct:
        res = calc(t, rng, f"The subtotal is ${sub}. Apply the {pct}% discount and round to cents.",
                   f"round({sub} * (100 - {pct}) / 100, 2)", False, tool="python_eval")
    else:
        res = sub
    ans = money(num(res))
    t.answer(f"Subtotal ${sub}" + (f", after {pct}% off ${res}" if pct else "") +
             ". The total is below the subtotal only when there is a discount, as expected.",
             f"You will pay {ans}.", ans)
    return t, ans, truth


def task_budget(rng, T, recover):
    n = rng.choice(T.product_names)
    price = num(T.tables["product_prices"][n]["price_usd"])
    budget = rng.randint(int(price) + 2, int(price * 12) + 20)
    cnt = math.floor(budget / price)
    left = budget - cnt * price
    truth = f"{cnt}, {money(left)} left"
    user = (f"I have ${budget} to spend on {n} (the product \"{n}\" in the catalog). How many can I buy, and how "
            f"much money will be left over?")
    t = Trajectory(T, rng, ["search_table", "calculator"], user)
    obs = lookup(t, rng, "product_prices", n, f"Plan: find the price of one {n}, divide my budget by it rounding "
                 f"down, then compute the change.", recover, T.product_names)
    p = obs["price_usd"]
    c = calc(t, rng, f"One {n} costs ${p}. Whole items: floor division of {budget} by {p}.",
             f"{budget} // {p!r}", False)
    l = calc(t, rng, f"I can buy {c}. Leftover: budget minus {c} × {p}.", f"{budget} - {c} * {p!r}", False)
    ans = f"{int(c)}, {money(num(l))} left"
    t.answer(f"{c} items cost {c} × {p}; {l} remains, which is less than one more {n} (${p}), so {c} is the maximum.",
             f"You can buy {int(c)} × {n} and will have {money(num(l))} left.", ans)
    return t, ans, truth


def task_travel(rng, T, recover):
    while True:
        miles = rng.randint(5, 600)
        speed = rng.choice([40, 50, 60, 70, 80, 90, 100, 110, 120])
        hours = miles * Fraction("1.609344") / speed
        if not near_boundary(hours, 2):
            break
    truth = f"{round_half_up(hours, 2)} hours"
    user = f"A route is {miles} miles long. Driving at an average {speed} km/h, how many hours does it take (two decimals)?"
    t = Trajectory(T, rng, ["unit_convert", "python_eval"], user)
    think = "Plan: convert the distance to kilometers, then divide by the speed and round to two decimals."
    args = {"value": miles, "from_unit": "mi", "to_unit": "km"}
    if recover:
        obs = t.call(think, "unit_convert", {"value": miles, "from_unit": "miles", "to_unit": "kilometers"})
        check("error" in obs, "unit names should fail")
        think = f"The tool wants unit symbols: {sentence(obs['error'])} Retrying with mi and km."
    obs = t.call(think, "unit_convert", args)
    km = obs["value"]
    h = calc(t, rng, f"{miles} mi = {km} km. Time = distance / speed.", f"round({km} / {speed}, 2)", False,
             tool="python_eval")
    ans = f"{Decimal(h).quantize(Decimal('0.01'))} hours"
    t.answer(f"{km} km at {speed} km/h is {h} h; a mile is about 1.6 km so this is roughly {miles} × 1.6 / {speed}.",
             f"The drive takes about {ans}.", ans)
    return t, ans, truth


def task_dates(rng, T, recover):
    d1 = datetime.date(1990, 1, 1) + datetime.timedelta(days=rng.randrange(14000))
    d2 = d1 + datetime.timedelta(days=rng.randint(8, 4000))
    days = (d2 - d1).days
    truth = f"{days} days = {days // 7} weeks and {days % 7} days"
    human = lambda d: f"{d.strftime('%B')} {d.day}, {d.year}"
    user = rng.choice([f"How many days are there from {human(d1)} to {human(d2)}? Express it also in weeks and days.",
                       f"Count the days between {d1.isoformat()} and {d2.isoformat()}, and convert that to full "
                       f"weeks plus remaining days."])
    t = Trajectory(T, rng, ["calendar_days_between", "calculator"], user)
    think = "Plan: get the day count from the calendar tool, then split it into weeks with // 7 and % 7."
    if recover:
        obs = t.call(think, "calendar_days_between", {"start": human(d1), "end": human(d2)})
        check("error" in obs, "free-form dates should fail")
        think = f"The calendar tool needs ISO dates: {sentence(obs['error'])} Retrying with {d1.isoformat()} and {d2.isoformat()}."
    obs = t.call(think, "calendar_days_between", {"start": d1.isoformat(), "end": d2.isoformat()})
    n = obs["days"]
    w = calc(t, rng, f"{n} days. Full weeks:", f"{n} // 7", False)
    r = calc(t, rng, f"{w} full weeks. Remaining days:", f"{n} % 7", False)
    ans = f"{n} days = {w} weeks and {r} days"
    t.answer(f"Check: {w} × 7 + {r} = {int(w) * 7 + int(r)}, matching {n}.", f"That is {ans}.", ans)
    return t, ans, truth


def task_temperature(rng, T, recover):
    a, b = rng.sample(T.city_names, 2)
    f = 32 + 9 * rng.randint(-3, 8)
    c = rng.randint(-15, 40)
    cf = Fraction(f - 32) * 5 / 9
    if cf == c:
        c += 1
    warmer = a if cf > c else b
    truth = f"{warmer}, by {fmt_num(abs(cf - c))} °C"
    user = (f"The forecast says {f} °F in {a} and {c} °C in {b}. Which city will be warmer, and by how many "
            f"degrees Celsius?")
    t = Trajectory(T, rng, ["unit_convert", "calculator"], user)
    think = f"Plan: convert {a}'s temperature to Celsius, then compare and subtract."
    if recover:
        obs = t.call(think, "unit_convert", {"value": f, "from_unit": "F", "to_unit": "km"})
        check("error" in obs, "temperature to length should fail")
        think = f"Wrong target unit: {sentence(obs['error'])} I meant C."
    obs = t.call(think, "unit_convert", {"value": f, "from_unit": "F", "to_unit": "C"})
    ac = obs["value"]
    hi, lo = (ac, str(c)) if num(ac) > c else (str(c), ac)
    d = calc(t, rng, f"{f} °F = {ac} °C. The difference is the higher minus the lower.", f"{hi} - ({lo})", False)
    w = a if num(ac) > c else b
    ans = f"{w}, by {d} °C"
    t.answer(f"{a}: {ac} °C, {b}: {c} °C; the difference {d} is positive.", f"{w} will be warmer by {d} °C.", ans)
    return t, ans, truth


def task_average(rng, T, recover):
    while True:
        k = rng.randint(3, 4 if recover else 5)
        names = rng.sample(T.city_names, k)
        pops = [T.tables["city_population"][n]["population"] for n in names]
        mean = Fraction(sum(pops), k)
        if not near_boundary(mean, 0):
            break
    truth = fmt_int(int(round_half_up(mean, 0)))
    user = f"What is the average population of {and_list(names)}, rounded to the nearest whole number?"
    t = Trajectory(T, rng, ["search_table", "python_eval"], user)
    think = f"Plan: look up the {k} populations, then average them with python_eval. Starting with {names[0]}."
    got = []
    for i, n in enumerate(names):
        obs = lookup(t, rng, "city_population", n, think, recover and i == 0, T.city_names)
        got.append(obs["population"])
        think = f"{n}: {fmt_int(obs['population'])}." + (f" Next {names[i + 1]}." if i + 1 < k else " Now the mean.")
    res = calc(t, rng, think, f"round(sum([{', '.join(map(str, got))}]) / {k})", False, tool="python_eval")
    ans = fmt_int(int(res))
    t.answer(f"The mean {res} lies between the smallest ({fmt_int(min(got))}) and largest ({fmt_int(max(got))}) "
             f"values, as a mean must.", f"The average population is {ans}.", ans)
    return t, ans, truth


def task_interest(rng, T, recover):
    while True:
        p = rng.choice([500, 1000, 1500, 2000, 2500, 5000, 10000, 12000, 20000])
        r = Fraction(rng.choice(["1.5", "2", "2.5", "3", "3.5", "4", "4.5", "5", "6", "7"]))
        n = rng.randint(2, 15)
        final = p * (1 + r / 100) ** n
        if not near_boundary(final, 2):
            break
    fin_r = round_half_up(final, 2)
    truth = f"balance {money(final)}, interest {money(Fraction(str(fin_r)) - p)}"
    user = (f"I deposit ${p} at {exact_decimal(r)}% interest per year, compounded yearly. What is the balance after "
            f"{n} years, and how much of it is interest? Round to the cent.")
    t = Trajectory(T, rng, ["python_eval", "calculator"], user)
    bal = calc(t, rng, f"Plan: balance = principal × (1 + rate)^years, rounded to cents; then interest = balance "
                       f"- principal.", f"round({p} * (1 + {exact_decimal(r)} / 100) ** {n}, 2)", recover,
               tool="python_eval")
    it = calc(t, rng, f"The balance is ${bal}. Interest earned:", f"{bal} - {p}", False)
    ans = f"balance {money(num(bal))}, interest {money(num(it))}"
    t.answer(f"Simple interest would give {p} × {exact_decimal(r)}% × {n} = "
             f"{money(p * r / 100 * n)}; compounding gives a bit more, {money(num(it))}, as it should.",
             f"After {n} years the balance is {money(num(bal))}, of which {money(num(it))} is interest.", ans)
    return t, ans, truth


def task_recipe(rng, T, recover):
    while True:
        have = Fraction(rng.randint(5, 100), 4)
        per = Fraction(rng.randint(2, 16), 4)
        lbs = have / Fraction("0.45359237")
        if not near_boundary(lbs / per, 0, "int") and lbs >= per:
            break
    batches = math.floor(lbs / per)
    truth = f"{batches} batches"
    user = (f"A bread recipe needs {exact_decimal(per)} lb of flour per batch. I have {exact_decimal(have)} kg of "
            f"flour. How many full batches can I make?")
    t = Trajectory(T, rng, ["unit_convert", "calculator"], user)
    think = "Plan: convert my flour to pounds, then divide by the amount per batch, rounding down."
    if recover:
        obs = t.call(think, "unit_convert", {"value": jnum(have), "from_unit": "kilograms", "to_unit": "pounds"})
        check("error" in obs, "unit names should fail")
        think = f"The converter rejected the unit names: {sentence(obs['error'])} Retrying with kg and lb."
    obs = t.call(think, "unit_convert", {"value": jnum(have), "from_unit": "kg", "to_unit": "lb"})
    lb = obs["value"]
    res = calc(t, rng, f"{exact_decimal(have)} kg = {lb} lb. Full batches: floor division by {exact_decimal(per)}.",
               f"{lb} // {exact_decimal(per)}", False)
    ans = f"{int(res)} batches"
    t.answer(f"{res} × {exact_decimal(per)} lb = {fmt_num(num(res) * per)} lb, no more than the {lb} lb I have, and "
             f"one more batch would need more.", f"You can make {ans}.", ans)
    return t, ans, truth


def task_shipping(rng, T, recover):
    while True:
        k = rng.randint(2, 2 if recover else 3)
        items = rng.sample(T.product_names, k)
        qty = [rng.randint(1, 5) for _ in items]
        kg = sum(q * num(T.tables["product_prices"][n]["weight_kg"]) for q, n in zip(qty, items))
        lb = kg / Fraction("0.45359237")
        if not near_boundary(lb, 1):
            break
    truth = f"{round_half_up(lb, 1)} lb"
    order = and_list([f"{q} × {n}" for q, n in zip(qty, items)])
    user = f"What does a parcel with {order} weigh in pounds? Ignore packaging and round to one decimal."
    t = Trajectory(T, rng, ["search_table", "calculator", "unit_convert", "python_eval"], user)
    think = f"Plan: look up each product's weight, total the kilograms, convert to pounds, round. First {items[0]}."
    ws = []
    for i, n in enumerate(items):
        obs = lookup(t, rng, "product_prices", n, think, recover and i == 0, T.product_names)
        ws.append(obs["weight_kg"])
        think = f"{n}: {obs['weight_kg']} kg each." + (f" Next {items[i + 1]}." if i + 1 < k else
                                                             " Now the total in kg.")
    tot = calc(t, rng, think, " + ".join(f"{q} * {w!r}" for q, w in zip(qty, ws)), False)
    obs = t.call(f"The parcel weighs {tot} kg. Convert to pounds.", "unit_convert",
                 {"value": jnum(num(tot)), "from_unit": "kg", "to_unit": "lb"})
    r = calc(t, rng, f"{tot} kg = {obs['value']} lb. Round to one decimal.", f"round({obs['value']}, 1)", False,
             tool="python_eval")
    ans = f"{Decimal(r).quantize(Decimal('0.1'))} lb"
    t.answer(f"A kilogram is about 2.2 lb, and {tot} × 2.2 ≈ {fmt_num(round(num(tot) * Fraction('2.2'), 1))}, close to "
             f"{r}.", f"The parcel weighs about {ans}.", ans)
    return t, ans, truth


AGENTIC_TASKS = [task_city_sum, task_city_compare, task_city_density, task_shopping, task_budget, task_travel,
                 task_dates, task_temperature, task_average, task_interest, task_recipe, task_shipping]


def build_agentic(scale):
    rng = random.Random("loom-corpora/agentic")
    tools = Tools(random.Random("loom-corpora/tables"))
    n = scaled(BASE_TRAJECTORIES, scale, minimum=len(AGENTIC_TASKS))
    recs, kinds, steps, recovered = [], {}, {}, 0
    for i in range(n):
        task = AGENTIC_TASKS[i % len(AGENTIC_TASKS)]
        recover = rng.random() < 0.25
        t, ans, truth = task(rng, tools, recover)
        check(ans == truth, f"{task.__name__}: trajectory answered {ans!r}, ground truth {truth!r}")
        check(2 <= t.calls <= 6, f"{task.__name__}: {t.calls} tool calls")
        check(t.errors == (1 if recover else 0), f"{task.__name__}: {t.errors} failed calls")
        segs = t.segments
        check(segs[0]["role"] == "system" and segs[-1]["role"] == "assistant", "segment order")
        recs.append({"segments": segs})
        name = task.__name__[5:]
        kinds[name] = kinds.get(name, 0) + 1
        steps[t.calls] = steps.get(t.calls, 0) + 1
        recovered += recover
    desc = (f"{n} tool-use trajectories (" + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) +
            f"); tool calls per trajectory: " + ", ".join(f"{k}: {v}" for k, v in sorted(steps.items())) +
            f"; {recovered} recover from a failed first call; segments system (tool descriptions), user (task), "
            f"assistant (<think> plan/reflection + <tool_call>), tool (<observation>), final assistant with "
            f"'Answer:'; every final answer equals a ground truth computed apart from the trajectory")
    return (*split_heldout(dedupe(recs)), desc)


# ---------------------------------------------------------------------------------------------------


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description="Build loom's demo corpora (commonsense, stem, agentic).")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the generated counts (default 1.0)")
    ap.add_argument("--commonsense-source", choices=["auto", "bible", "docs"], default="auto",
                    help="auto: the KJV via `bible` when installed, else license and package docs")
    a = ap.parse_args()
    if not (a.scale > 0 and math.isfinite(a.scale)):
        ap.error("--scale must be a positive number")

    builders = [("commonsense", lambda: build_commonsense(a.scale, a.commonsense_source), "text"),
                ("stem", lambda: build_stem(a.scale), "text"),
                ("agentic", lambda: build_agentic(a.scale), "segments")]
    manifest = ["# loom demo corpora, written by scripts/make_corpora.py "
                f"--scale {a.scale:g}" + (f" --commonsense-source {a.commonsense_source}"
                                          if a.commonsense_source != "auto" else ""),
                f"# JSONL, UTF-8, one record per line; held-out = every {HELDOUT_EVERY}th document (index % "
                f"{HELDOUT_EVERY} == 0) of each source (for stem, of the math and the code separately), train = "
                f"the rest; no record is in both",
                ""]
    rows = []
    for name, build, field in builders:
        t0 = time.perf_counter()
        train, held, desc = build()
        nbytes = 0
        for split, part in (("train", train), ("heldout", held)):
            rel = f"{name}/{split}.jsonl"
            path = os.path.join(a.out, rel)
            write_jsonl(path, part)
            size = os.path.getsize(path)
            nbytes += size
            rows.append((rel, len(part), size, sha256_file(path)))
        manifest.append(f"{name}: {{\"{field}\": ...}} per line. {desc}.")
        print(f"{name}: {len(train) + len(held)} documents ({len(train)} train, {len(held)} held-out), {nbytes:,} bytes, "
              f"{time.perf_counter() - t0:.1f} s")
    manifest += ["", "file records bytes sha256"]
    manifest += [f"{rel} {n} {size} {h}" for rel, n, size, h in rows]
    with open(os.path.join(a.out, "MANIFEST.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(manifest) + "\n")


if __name__ == "__main__":
    try:
        main()
    except Unverified as e:
        sys.exit(f"make_corpora: error: an answer failed its check, nothing more written: {e}")
