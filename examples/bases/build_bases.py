#!/usr/bin/env python3
"""Build memreg's two shipped base causal LMs (memreg-base-small / memreg-base-large).

Both bases share ONE byte-level BPE tokenizer (vocab 8192, ``<|endoftext|>`` = id 0) and are
GPT-2 shaped ``GPT2LMHeadModel`` s pretrained from scratch on general English that ships with a
Debian machine. Weights are stored as float16 safetensors (both folders together < 30 MB).

Text sources and licences
-------------------------
* English manual pages, ``/usr/share/man/man{1,5,7,8}/*.gz`` (translated trees such as
  ``/usr/share/man/de`` are skipped). Each page carries its own package's licence (GPL, LGPL,
  BSD, MIT, the "Linux man-pages" copyleft licence, ...); all are redistributable free-software
  documentation. Pages are rendered to plain text by the small roff stripper below; sections
  titled COPYRIGHT / LICENSE / LICENCE / COPYING / AUTHOR(S) / REPORTING BUGS are dropped, and
  roff comments (where most licence headers live) are never rendered. We only ship weights trained
  on this text, not the text itself.
* Python's ``pydoc_data.topics.topics`` (prose from the Python documentation, PSF licence /
  Zero-Clause BSD for the docs).
* NOT used (they are memreg's evaluation domains): ``/usr/share/common-licenses``,
  ``/usr/share/doc/*/copyright`` ("law") and Python ``.py`` sources ("code").

Pages are deduplicated by rendered text and split train/held-out BY PAGE (4 % of pages, chosen
by a hash of the page's path), so held-out perplexity is measured on unseen pages.

Rebuild (repository root; Python with torch, transformers >= 5, tokenizers, numpy):

    python examples/bases/build_bases.py corpus    --out .device/corpus
    python examples/bases/build_bases.py tokenizer --corpus .device/corpus --out models/memreg-tokenizer
    python examples/bases/build_bases.py encode    --corpus .device/corpus \
        --tokenizer models/memreg-tokenizer --out .device/tokens.npz
    # on a GPU (see examples/bases/gpu_pretrain.sh), e.g. 4 min large + 2.5 min small:
    python examples/bases/build_bases.py pretrain --tokens .device/tokens.npz \
        --tokenizer models/memreg-tokenizer --size large --out models/memreg-base-large \
        --device cuda --minutes 4 --seed 0
    python examples/bases/build_bases.py pretrain ... --size small --out models/memreg-base-small \
        --device cuda --minutes 2.5 --seed 0
    # on CPU instead (slow; a fallback): --device cpu --threads 2 --minutes 60
    # if pretrain ran with --no-copy-tokenizer, add the tokenizer files afterwards:
    python examples/bases/build_bases.py attach-tokenizer --tokenizer models/memreg-tokenizer \
        --model models/memreg-base-large

Everything is deterministic given --seed except the number of steps of a time-budgeted
(--minutes) run; pass --max-steps N for a bit-reproducible step count (on the same hardware).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

EOS = "<|endoftext|>"
MAN_SECTIONS = ("man1", "man5", "man7", "man8")
DROP_SECTION = re.compile(r"COPYRIGHT|LICEN[CS]E|LICENSING|COPYING|^AUTHORS?\b|REPORTING BUGS|^BUGS? REPORTS?$")

# --------------------------------------------------------------------------------------------
# 1. corpus: a small, fast, deterministic roff -> text renderer
# --------------------------------------------------------------------------------------------
GLYPHS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "aq": "'", "dq": '"', "lq": '"', "rq": '"',
    "oq": "'", "cq": "'", "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122",
    "ga": "`", "ti": "~", "ha": "^", "rs": "\\", "sl": "/", "mi": "-", "pl": "+", "eq": "=",
    "mu": "\u00d7", "di": "\u00f7", "<=": "<=", ">=": ">=", "!=": "!=", "->": "->", "<-": "<-",
    "de": "\u00b0", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "<", "ra": ">",
    "ba": "|", "or": "|", "fm": "'", "sq": "\u25a1", "ct": "\u00a2", "Po": "\u00a3",
    "Eu": "\u20ac", "ss": "\u00df", "pc": "\u00b7", "12": "\u00bd", "14": "\u00bc", "Fo": "\u00ab", "Fc": "\u00bb",
    "at": "@", "sh": "#", "Do": "$", "nm": "", "ua": "\u2191", "da": "\u2193", "if": "\u221e",
}
STRINGS = {"lq": '"', "rq": '"', "R": "\u00ae", "Tm": "\u2122", "(lq": '"', "(rq": '"'}
ESC = re.compile(
    r"""\\(?:
        f(?:\[[^\]]*\]|\(..|.)            # font change
      | \((?P<g2>..)                      # \(xx glyph
      | \[(?P<gb>[^\]]*)\]                # \[xxx] glyph
      | \*(?:\[(?P<sb>[^\]]*)\]|\((?P<s2>..)|(?P<s1>.))   # string register
      | n[+-]?(?:\[[^\]]*\]|\(..|.)       # number register
      | s[+-]?(?:\d|\(\d\d|\[\d+\])       # size change
      | [hvwXoDlLbxNRSZ](?P<q>['"|]).*?(?P=q)   # quoted-argument escapes
      | [kmMgFYV](?:\[[^\]]*\]|\(..|.)   # misc one-arg escapes
      | (?P<ch>.)                         # single-char escape
    )""",
    re.X,
)
SINGLE = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`",
          ".": ".", "t": " ", "_": "_", "&": "", "|": "", "^": "", "%": "", ":": "", "c": "",
          "/": "", ",": "", "!": "", "z": "", "p": "", "a": "", "d": "", "u": "", "r": "",
          "{": "", "}": "", '"': ""}


def _esc(m: re.Match) -> str:
    g = m.group("g2") or m.group("gb")
    if g is not None:
        if g.startswith("u") and len(g) >= 5:  # \[u2014]
            try:
                return chr(int(g[1:].split("_")[0], 16))
            except ValueError:
                return ""
        return GLYPHS.get(g, "")
    s = m.group("sb") or m.group("s2") or m.group("s1")
    if s is not None:
        return STRINGS.get(s, "")
    ch = m.group("ch")
    if ch is not None:
        return SINGLE.get(ch, ch)
    return ""


def unescape(s: str) -> str:
    i = s.find('\\"')  # inline comment (cheap check; \\" escaped backslash is rare)
    if i >= 0 and (i == 0 or s[i - 1] != "\\"):
        s = s[:i]
    return ESC.sub(_esc, s) if "\\" in s else s


ARG = re.compile(r'"((?:[^"]|"")*)"?|(\S+)')


def split_args(s: str) -> list[str]:
    return [(a if a is not None and b is None else b or "").replace('""', '"') for a, b in
            ((m.group(1), m.group(2)) for m in ARG.finditer(s))]


ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB", "SB"}
JOINED = {"B", "I", "SM", "Nm", "Nd", "Ar", "Pa", "Em", "Sy", "Li", "Dv", "Ev", "Er", "Cm",
          "Va", "Fn", "Fa", "Ft", "Cd", "Ic", "Ql", "Dq", "Sq", "Pq", "Qq", "Aq", "Op", "Ad",
          "An", "Lk", "Mt", "Ms", "Tn", "Ux", "At", "Bx", "Ox", "Nx", "Fx", "Dl", "D1", "Xo", "Xc",
          "Oo", "Oc", "Ta", "No", "Ns", "Pf", "Eo", "Ec", "Do", "Dc", "Qo", "Qc", "So", "Sc",
          "Po", "Pc", "Bo", "Bc", "Brq", "Bro", "Brc", "Bq", "Ao", "Ac", "St", "Lb", "In", "Vt",
          "Fo", "Fc", "%A", "%T", "%B", "%J", "%D", "%N", "%O", "%P", "%Q", "%R", "%V", "%I",
          "UR", "MT", "OP", "SY", "Fl", "Xr", "It", "IP", "TQ", "HP"}
BREAK = {"PP", "LP", "P", "TP", "IP", "HP", "TQ", "sp", "br", "Pp", "Lp", "Bl", "El", "Bd", "Ed",
         "It", "RS", "RE", "Ss", "SY", "YS", "EX", "EE", "in", "ti", "bp", "ne", "Dl", "D1"}
MDOC_WORD = {"Fl": "-", "Ar": "", "Pa": "", "Xr": "", "Ns": "", "Op": "", "Oo": "", "Oc": "",
             "Cm": "", "Ic": "", "Em": "", "Sy": "", "Li": "", "Dq": "", "Sq": "", "Qq": "", "Pq": "",
             "Va": "", "Ev": "", "Dv": "", "Er": "", "Fa": "", "Fn": "", "Nm": "", "Ql": "",
             "Aq": "", "Ta": "", "No": "", "Pf": "", "Ux": "", "Bx": "", "Ad": "", "Lk": "", "Mt": ""}


def render_roff(src: str) -> tuple[str | None, str]:
    """Render one man page. Returns (text or None, first NAME line)."""
    out: list[str] = []
    para: list[str] = []
    fill = True
    dropping = False
    skip_until = None  # '..' for .de/.ig blocks, '.TE' for table spec
    table_spec = False

    def flush():
        if para:
            out.append(" ".join(para))
            para.clear()

    lines = src.split("\n")
    if len(lines) <= 3 and any(l.startswith(".so ") for l in lines):
        return None, ""  # include-only stub (duplicate of another page)
    for raw in lines:
        if skip_until is not None:
            if raw.startswith(skip_until):
                skip_until = None
            continue
        if raw.startswith('.\\"') or raw.startswith("'\\\"") or raw.startswith('\\"'):
            continue
        if table_spec:  # tbl: options/format lines end with '.'
            if raw.rstrip().endswith("."):
                table_spec = False
            continue
        if raw[:1] in (".", "'"):
            body = raw[1:].lstrip()
            mac, _, rest = body.partition(" ")
            mac = mac.strip()
            if mac in ("SH", "Sh", "SS", "Ss"):
                flush()
                title = unescape(" ".join(split_args(rest))).strip()
                if mac in ("SH", "Sh"):
                    dropping = bool(DROP_SECTION.search(title.upper()))
                if not dropping and title:
                    out.append(title)
                continue
            if mac in ("de", "de1", "am", "ig"):
                skip_until = ".."
                continue
            if mac == "TS":
                flush()
                table_spec = True
                continue
            if mac in ("TE", "T{", "T}"):
                continue
            if dropping:
                continue
            if mac == "nf" or mac == "EX" or (mac == "Bd" and "-literal" in rest):
                flush()
                fill = False
                continue
            if mac in ("fi", "EE", "Ed"):
                flush()
                fill = True
                continue
            if mac in BREAK:
                flush()
            if mac in ALTERNATING:
                text = "".join(split_args(unescape(rest)))
            elif mac in JOINED or mac in BREAK:
                if mac in ("Bl", "Bd", "Bf", "El", "Ed", "RS", "RE", "sp", "in", "ti", "ne", "bp", "br"):
                    continue
                words = []
                pending = ""
                margs = split_args(unescape(rest))
                if mac in ("IP", "TP", "HP", "TQ"):
                    margs = margs[:1] if mac == "IP" else []
                for a in margs:
                    if a in MDOC_WORD:
                        pending = MDOC_WORD[a] if a == "Fl" else pending
                        continue
                    words.append(pending + a)
                    pending = ""
                if mac == "Fl":
                    words = ["-" + w for w in words] or ["-"]
                if mac == "Xr" and len(words) >= 2:
                    words = [f"{words[0]}({words[1]})"] + words[2:]
                if mac == "Nd":
                    words = ["\u2014"] + words
                text = " ".join(w for w in words if w)
                if mac in ("UR", "MT"):
                    text = ""
            else:
                continue  # any other request/macro: no text
            if text:
                (para.append(text) if fill else out.append(text))
            continue
        if dropping:
            continue
        line = unescape(raw).replace("T{", "").replace("T}", "").replace("\t", " ").rstrip()
        if not line.strip():
            flush()
            continue
        if fill:
            para.append(line.strip())
        else:
            flush()
            out.append(line)
    flush()
    text = "\n".join(re.sub(r"[ \u00a0]{2,}", " ", l).strip() if not l.startswith(" ") else l.rstrip()
                     for l in out)
    text = re.sub(r"\n{2,}", "\n", text).strip()
    return (text or None), ""


def _render_file(path: str) -> tuple[str, str | None]:
    try:
        with gzip.open(path, "rb") as f:
            src = f.read().decode("utf-8", errors="replace")
    except (OSError, EOFError):
        return path, None
    return path, render_roff(src)[0]


def _bucket(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:4], "big") % 10000


def _origin(key: str) -> str:
    return "pydoc" if key.startswith("pydoc:") else "gcloud" if "/gcloud" in key else "other_man"


def cmd_corpus(args):
    from multiprocessing import Pool

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.man_root)
    files, seen_real = [], set()
    for sec in MAN_SECTIONS:
        d = root / sec
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if not p.name.endswith(".gz") or p.is_symlink():
                continue  # symlinks are aliases of another page
            real = os.path.realpath(p)
            if real in seen_real:
                continue
            if p.name.startswith("gcloud") and _bucket(args.seed, p.name) >= args.gcloud_frac * 10000:
                continue  # 16.6k of 17.8k man1 pages are gcloud CLI reference: keep a sample
            seen_real.add(real)
            files.append(str(p))
    t0 = time.time()
    with Pool(args.workers) as pool:
        rendered = pool.map(_render_file, files, chunksize=64)
    pages = []  # (key, text)
    for path, text in rendered:
        if text and len(text) >= args.min_chars:
            pages.append((os.path.relpath(path, root), text))
    import pydoc_data.topics as pt

    for name in sorted(pt.topics):
        text = re.sub(r"\n{2,}", "\n", pt.topics[name].strip())
        if len(text) >= args.min_chars:
            pages.append((f"pydoc:{name}", text))
    # dedupe identical pages (by rendered text), keep first in sorted-path order
    seen, uniq, dups = set(), [], 0
    for key, text in pages:
        h = hashlib.sha1(text.encode()).digest()
        if h in seen:
            dups += 1
            continue
        seen.add(h)
        uniq.append((key, text))
    train, valid = [], []
    for key, text in uniq:
        (valid if _bucket(args.seed, key) < args.valid_frac * 10000 else train).append((key, text))
    stats = {"man_files": len(files), "pages_after_render": len(pages), "duplicates_dropped": dups,
             "gcloud_frac": args.gcloud_frac,
             "bytes_by_origin": {o: sum(len(t.encode()) for k, t in uniq if _origin(k) == o)
                                 for o in ("gcloud", "other_man", "pydoc")}}
    for name, part in (("train", train), ("valid", valid)):
        body = "\n\n".join(t for _, t in part) + "\n"
        (out / f"{name}.txt").write_text(body, encoding="utf-8")
        stats[name] = {"pages": len(part), "bytes": len(body.encode()),
                       "pydoc_pages": sum(k.startswith("pydoc:") for k, _ in part)}
    (out / "valid_pages.txt").write_text("\n".join(k for k, _ in valid) + "\n")
    stats["render_seconds"] = round(time.time() - t0, 1)
    stats["sources"] = SOURCE_DESCRIPTION
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats, indent=2))


SOURCE_DESCRIPTION = ("English man pages /usr/share/man/man{1,5,7,8} (Debian, rendered by a roff "
                      "stripper; COPYRIGHT/LICENSE/AUTHORS/REPORTING BUGS sections dropped; 15% "
                      "hash-sample of the 16.6k gcloud CLI pages) + Python "
                      "pydoc_data topics; deduplicated; 4% of pages held out by path hash")


def read_pages(path: Path) -> list[str]:
    return [p for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]


# --------------------------------------------------------------------------------------------
# 2. tokenizer
# --------------------------------------------------------------------------------------------
def cmd_tokenizer(args):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    pages = read_pages(Path(args.corpus) / "train.txt")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(pages, trainer=trainer, length=len(pages))
    assert tok.token_to_id(EOS) == 0
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS,
                                   unk_token=EOS, pad_token=EOS, model_max_length=args.max_len)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    # transformers 5 writes "TokenizersBackend"; the 4.x-compatible alias loads in both
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    # checks
    from transformers import AutoTokenizer

    t2 = AutoTokenizer.from_pretrained(out)
    samples = ["The quick brown fox -- jumps over `ls -la /usr/share`.\n\tTabs & ünïcødé ✓ 日本",
               pages[0][:500], pages[-1][-500:]]
    for s in samples:
        ids = t2(s)["input_ids"]
        assert t2.decode(ids) == s, (s, t2.decode(ids))
    print(f"vocab={len(t2)} eos={t2.eos_token_id} bos={t2.bos_token_id} pad={t2.pad_token_id}; "
          f"round-trip ok; sample: {t2.tokenize(samples[0])[:16]}")


# --------------------------------------------------------------------------------------------
# 3. encode
# --------------------------------------------------------------------------------------------
def cmd_encode(args):
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(args.tokenizer) / "tokenizer.json"))
    eos = tok.token_to_id(EOS)
    assert tok.get_vocab_size() <= 65535
    arrays, info = {}, {}
    for name in ("train", "valid"):
        pages = read_pages(Path(args.corpus) / f"{name}.txt")
        encs = tok.encode_batch(pages, add_special_tokens=False)
        ids = []
        for e in encs:
            ids.extend(e.ids)
            ids.append(eos)
        arr = np.asarray(ids, dtype=np.uint16)
        cap = args.max_train_tokens if name == "train" else args.max_valid_tokens
        if cap and len(arr) > cap:
            arr = arr[:cap]
        arrays[name] = arr
        info[name] = {"pages": len(pages), "tokens": int(len(arr)),
                      "bytes_per_token": round(sum(len(p.encode()) + 2 for p in pages) / max(1, len(ids)), 3)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    info["file_mb"] = round(out.stat().st_size / 1e6, 2)
    print(json.dumps(info, indent=2))


# --------------------------------------------------------------------------------------------
# 4. pretrain
# --------------------------------------------------------------------------------------------
SIZES = {  # GPT-2 shaped; tied embeddings; fp16 on disk: small 10.8 MB + large 15.4 MB < 30 MB
    # (each model.safetensors must also stay < 16 MB, the device's file-return limit)
    "small": dict(n_embd=256, n_layer=4, n_head=4, lr=1e-3),   # 5.39 M params
    "large": dict(n_embd=320, n_layer=4, n_head=5, lr=8e-4),   # 7.72 M params
}
FILE_LIMIT_BYTES = 16 * 1000 * 1000  # per model.safetensors (device file-return limit)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_model(size: str, vocab: int, eos: int, n_positions: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    s = SIZES[size]
    cfg = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=s["n_embd"],
                     n_layer=s["n_layer"], n_head=s["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                     tie_word_embeddings=True)
    model = GPT2LMHeadModel(cfg)
    n = sum(p.numel() for p in model.parameters())  # parameters() de-duplicates tied weights
    if 2 * n + 100_000 > FILE_LIMIT_BYTES:
        raise SystemExit(f"{size}: {n} params = {2 * n / 1e6:.1f} MB fp16 > 16 MB limit; shrink SIZES")
    return model, n


def cmd_pretrain(args):
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tok_cfg = json.loads((Path(args.tokenizer) / "tokenizer.json").read_text())
    vocab = len(tok_cfg["model"]["vocab"]) + sum(1 for t in tok_cfg["added_tokens"]
                                                  if t["content"] not in tok_cfg["model"]["vocab"])
    eos = next(t["id"] for t in tok_cfg["added_tokens"] if t["content"] == EOS)
    data = np.load(args.tokens)
    train = torch.from_numpy(data["train"].astype(np.int64)).to(dev)
    valid = torch.from_numpy(data["valid"].astype(np.int64))
    assert int(train.max()) < vocab
    T = args.seq_len
    bs = args.batch_size or (64 if cuda else 8)
    model, n_params = build_model(args.size, vocab, eos, args.n_positions)
    assert T <= args.n_positions
    model.to(dev).train()
    lr = args.lr or SIZES[args.size]["lr"]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=cuda)
    fwd = torch.compile(model) if args.compile else model
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    offs = torch.arange(T + 1, device=dev)
    total = args.max_steps  # None -> fixed after measuring speed
    budget = args.minutes * 60 if args.minutes else None
    if total is None and budget is None:
        raise SystemExit("give --minutes or --max-steps")

    def lr_at(step):
        warm = min(args.warmup, max(1, (total or 10 ** 9) // 10))
        if step < warm:
            return lr * (step + 1) / warm
        if total is None:
            return lr
        prog = min(1.0, (step - warm) / max(1, total - warm))
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))

    history, step, t0, t_measure = [], 0, time.time(), None
    print(f"[{args.size}] params={n_params} ({2 * n_params / 1e6:.1f} MB fp16) vocab={vocab} "
          f"train_tokens={len(train)} valid_tokens={len(valid)} batch={bs}x{T} device={dev} lr={lr}",
          flush=True)
    while total is None or step < total:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = torch.randint(0, len(train) - T - 1, (bs,), device=dev, generator=gen)
        batch = train[starts[:, None] + offs]
        x, y = batch[:, :-1], batch[:, 1:]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            logits = fwd(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step == args.measure_from:
            if cuda:
                torch.cuda.synchronize()
            t_measure = time.time()
        if total is None and step == args.measure_from + args.measure_steps:
            if cuda:
                torch.cuda.synchronize()
            rate = args.measure_steps / (time.time() - t_measure)
            remaining = budget - (time.time() - t0)
            total = step + max(1, int(rate * remaining))
            print(f"[{args.size}] measured {rate:.2f} steps/s -> total steps {total}", flush=True)
        if step % args.log_every == 0 or step == total:
            l = loss.item()
            el = time.time() - t0
            tps = step * bs * T / el
            history.append([step, round(l, 4), round(el, 1)])
            print(f"[{args.size}] step {step}/{total or '?'} loss {l:.4f} lr {lr_at(step - 1):.2e} "
                  f"tok/s {tps:,.0f} elapsed {el:.0f}s", flush=True)
    if cuda:
        torch.cuda.synchronize()
    train_wall = time.time() - t0
    ppl, n_eval = evaluate(model, valid, T, dev, cuda, args.eval_tokens)
    print(f"[{args.size}] held-out ppl {ppl:.2f} on {n_eval} tokens; train wall {train_wall:.0f}s "
          f"tokens seen {step * bs * T:,}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").to(torch.float16)
    model.generation_config.pad_token_id = eos
    model.save_pretrained(out)  # transformers 5: safetensors
    size_b = (out / "model.safetensors").stat().st_size
    info = {
        "name": f"memreg-base-{args.size}", "architecture": "GPT2LMHeadModel",
        "params": n_params, "n_embd": SIZES[args.size]["n_embd"], "n_layer": SIZES[args.size]["n_layer"],
        "n_head": SIZES[args.size]["n_head"], "n_positions": args.n_positions, "vocab_size": vocab,
        "safetensors_bytes": size_b, "dtype_on_disk": "float16",
        "steps": step, "batch_size": bs, "seq_len": T, "tokens_seen": step * bs * T,
        "train_tokens": int(len(train)), "epochs": round(step * bs * T / len(train), 2),
        "lr": lr, "warmup": args.warmup, "schedule": "linear warm-up, cosine to 10%",
        "optimizer": "AdamW betas (0.9, 0.95) wd 0.1 clip 1.0", "precision": "bf16 autocast" if cuda else "fp32",
        "train_wall_s": round(train_wall, 1),
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu x{torch.get_num_threads()} threads",
        "torch": torch.__version__, "heldout_ppl": round(ppl, 3), "heldout_tokens": n_eval,
        "seed": args.seed, "corpus": SOURCE_DESCRIPTION, "tokenizer": "memreg-tokenizer (byte-level BPE 8192)",
        "loss_history": history[-200:],
    }
    (out / "training.json").write_text(json.dumps(info, indent=2))
    if not args.no_copy_tokenizer:
        attach_tokenizer(Path(args.tokenizer), out)
    print(f"[{args.size}] saved {out} ({size_b / 1e6:.2f} MB)", flush=True)


@__import__("torch").no_grad()
def evaluate(model, valid, T, dev, cuda, cap):
    import torch

    model.eval()
    n = min(len(valid), cap) // T * T
    w = valid[:n].view(-1, T).to(dev)
    tot, cnt = 0.0, 0
    for i in range(0, len(w), 16):
        x = w[i:i + 16]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(input_ids=x).logits
        l = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                              x[:, 1:].reshape(-1), reduction="sum")
        tot += l.item()
        cnt += x[:, 1:].numel()
    model.train()
    return math.exp(tot / max(1, cnt)), cnt


def attach_tokenizer(tok_dir: Path, model_dir: Path):
    for f in TOKENIZER_FILES:
        if (tok_dir / f).exists():
            shutil.copy2(tok_dir / f, model_dir / f)


def cmd_attach(args):
    attach_tokenizer(Path(args.tokenizer), Path(args.model))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(args.model)
    t = AutoTokenizer.from_pretrained(args.model)
    assert m.config.eos_token_id == t.eos_token_id and m.config.vocab_size == len(t)
    print(f"{args.model}: ok ({sum(p.numel() for p in m.parameters())} params, vocab {len(t)})")


# --------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("corpus")
    p.add_argument("--out", required=True)
    p.add_argument("--man-root", default="/usr/share/man")
    p.add_argument("--valid-frac", type=float, default=0.04)
    p.add_argument("--min-chars", type=int, default=200)
    p.add_argument("--gcloud-frac", type=float, default=0.15,
                   help="fraction of the (repetitive) gcloud CLI pages to keep")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_corpus)
    p = sub.add_parser("tokenizer")
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--max-len", type=int, default=512)
    p.set_defaults(fn=cmd_tokenizer)
    p = sub.add_parser("encode")
    p.add_argument("--corpus", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-train-tokens", type=int, default=0, help="0 = no cap")
    p.add_argument("--max-valid-tokens", type=int, default=0)
    p.set_defaults(fn=cmd_encode)
    p = sub.add_parser("pretrain")
    p.add_argument("--tokens", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--size", choices=sorted(SIZES), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--minutes", type=float, help="training time budget (eval/save come on top)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=0, help="0 = 64 on cuda, 8 on cpu")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--n-positions", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.0, help="0 = size default")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--measure-from", type=int, default=5)
    p.add_argument("--measure-steps", type=int, default=15)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-tokens", type=int, default=200_000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-copy-tokenizer", action="store_true")
    p.set_defaults(fn=cmd_pretrain)
    p = sub.add_parser("attach-tokenizer")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--model", required=True)
    p.set_defaults(fn=cmd_attach)
    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
