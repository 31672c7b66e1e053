"""Every shell command of the docs runs: README.md, bundles/**/README.md, bundles/common/docs/*.md (the usage page
every bundle carries as docs/usage.md; tests/test_bundle_sync.py keeps the copies identical), data/README.md,
docs/*.md.

How a documented command is run (``plan``), in this order:

1. ``DOC_COMMANDS``, the one table of exceptions: commands skipped with their reason (internet, GPU, the test suite
   itself, the paper's full protocol) and commands adapted (placeholders replaced, a hand-downloaded archive built
   tiny, the user's own scans made tiny, the arguments that make a benchmark script tiny). An entry with
   ``prepare`` only prepares the command (a setup, placeholders substituted); the command then goes on to the
   other entries and the general rules.
2. General rules that append tiny settings (``TINY``): ``monai.bundle run`` (also under torchrun, or after
   ``cd DIR &&``) gets a 4-wide network at 32x32, one epoch of one iteration, no workers (``--resume true`` gets a
   second epoch to resume into); the ``monai.bundle`` verbs get the width the bundle was trained with;
   ``onenet-med predict`` / ``compare`` / ``profile`` / ``data demo`` / ``export`` get their tiny options; other
   ``onenet-med`` commands (``data check``, ``bundle export``, ``bundle sync``), variable assignments, ``mkdir``,
   ``ls``, ``cat`` run as written.
3. Anything else fails ``test_every_documented_command_has_a_plan`` (fast suite) naming the doc line: add a rule
   or an entry to ``DOC_COMMANDS``.

The slow tests run every command of a doc, in order, as one pytest item each (``tests/test_docs.py::
test_documented_command[README.md:27]``), in a copy of the checkout (the package is imported from the copy,
so ``bundle_root`` and the default ``dataset_dir`` point into it; the copy holds every file git lists, the bundles'
generated files included) with tiny synthetic datasets in its ``data/`` (tests/data_trees.py: MSD Heart, Brain,
Lung, a Hippocampus-like task of no registered kind for ``onenet_msd``, VOC, Pets): the checkout stays clean.
Commands see ``python`` and ``onenet-med`` of the running interpreter's environment, one thread, no GPU, and a
``HOME`` inside the copy (``~/bundles`` of the docs lands there). The terminal summary lists every command: ran
(seconds), skipped (reason), failed.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from onenet_med.data.tasks import TaskSpec
from tests.conftest import REPO_ROOT
from tests.data_trees import CUSTOM_TASK

ROOT = Path(REPO_ROOT)
DOC_GLOBS = ("README.md", "bundles/**/README.md", "bundles/common/docs/*.md", "data/README.md", "docs/*.md")
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}
# the first word of an inline `code span` that makes it a command (fenced shell blocks are commands whatever they say)
COMMAND_WORDS = {"python", "python3", "torchrun", "onenet-med", "pip", "bash", "sh", "tar", "cp", "mkdir", "pytest"}

TINY_WIDTH = 4
TINY = {  # python -m monai.bundle run (and torchrun ... -m monai.bundle run)
    "network_def#features": TINY_WIDTH,
    "spatial_size": 32,
    "batch_size": 4,
    "num_workers": 0,
    "max_epochs": 1,
    "epoch_length": 1,
    "val_interval": 1,
    "val_fraction": 0.5,  # two validation cases: DDP gives each of its 2 processes one
    "bn_refresh_batches": 1,
    "progress": "false",
}
TINY_PREDICT = f"--override network_def#features={TINY_WIDTH} --override spatial_size=32 --no-progress"
TINY_COMPARE = (
    f"--width {TINY_WIDTH} --epochs 1 --iterations-per-epoch 1 --batch-size 4 --no-profile --set spatial_size=32 "
    "--set num_workers=0 --set val_interval=1 --set bn_refresh_batches=1 --set val_fraction=0.5"
)
TINY_PROFILE = "--size 32 --repeats 1 --warmup 0"
TINY_CALIBRATION = 4  # int8 calibration slices of onenet-med export


# ------------------------------------------------------------------------------------------- the exceptions table


def _voc_archive(ws: Path) -> None:
    """VOCtrainval_11-May-2012.tar as the VOC site ships it (VOCdevkit/VOC2012/...), tiny."""
    from tests.data_trees import make_voc_tree

    shutil.rmtree(ws / "data" / "VOCdevkit")  # the prebuilt tree: the doc's extraction must make it
    make_voc_tree(ws / "archive_src")
    with tarfile.open(ws / "VOCtrainval_11-May-2012.tar", "w") as tar:
        tar.add(ws / "archive_src" / "VOCdevkit", arcname="VOCdevkit")
    shutil.rmtree(ws / "archive_src")


def _pets_archives(ws: Path) -> None:
    """images.tar.gz (images/...) and annotations.tar.gz (annotations/...) as the Oxford-IIIT Pet site ships them."""
    from tests.data_trees import make_pets_tree

    # the prebuilt tree out, the empty folder the doc's `mkdir -p` made in: the doc's extraction must fill it
    shutil.rmtree(ws / "data" / "oxford-iiit-pet")
    (ws / "data" / "oxford-iiit-pet").mkdir()
    pets = make_pets_tree(ws / "archive_src")
    for name in ("images", "annotations"):
        with tarfile.open(ws / f"{name}.tar.gz", "w:gz") as tar:
            tar.add(pets / name, arcname=name)
    shutil.rmtree(ws / "archive_src")


#: The MSD-layout task the docs train ``onenet_msd`` on (``data/Task04_Hippocampus``): registered nowhere, like a
#: user's own; one MRI channel and three classes named as in the Decathlon's Hippocampus.
HIPPOCAMPUS = CUSTOM_TASK.replace(
    name="Task04_Hippocampus",
    in_channels=1,
    channel_names=("MRI",),
    class_names=("background", "Anterior", "Posterior"),
    msd_task="Task04_Hippocampus",
    msd_name="Hippocampus",
)


def _scans(*paths: str, task: str | TaskSpec = "heart") -> Callable[[Path], None]:
    """A setup writing the user's own scans named in a doc (tiny volumes of ``task``) at ``paths``."""

    def write(ws: Path) -> None:
        from tests.data_trees import save_nifti, volume_arrays

        image, _ = volume_arrays(task, seed=7)
        for path in paths:
            save_nifti(ws / path, image)

    return write


def _bundle_elsewhere(ws: Path) -> None:
    """usage.md's ``B=path/to/onenet_heart``: a copy of the bundle outside ``bundles/`` (its own root, no default
    data: the commands pass ``--dataset_dir``)."""
    target = ws / "path" / "to" / "onenet_heart"
    if not target.exists():
        shutil.copytree(ws / "bundles" / "onenet_heart", target)


def _home_data(ws: Path) -> None:
    """bundles/README.md's ``cd /anywhere`` and ``~/data/Task02_Heart``: a folder and the data under ``HOME``."""
    home = home_dir(ws)
    (home / "anywhere").mkdir(parents=True, exist_ok=True)
    if not (home / "data" / "Task02_Heart").exists():
        shutil.copytree(ws / "data" / "Task02_Heart", home / "data" / "Task02_Heart")


@dataclass(frozen=True)
class Entry:
    """An exception to the general rules, matched by ``pattern`` (a regex searched in the command with leading
    ``VAR=value`` assignments removed) in the doc files matching ``docs``."""

    pattern: str
    reason: str
    skip: bool = False
    append: str = ""  # tiny arguments appended to the command
    replace: str | None = None  # run this instead
    setup: Callable[[Path], None] | None = None  # prepares the workspace before the command runs
    docs: str = "*"
    standing: bool = False  # a rule for any future command (GPU, internet): may match nothing today
    prepare: bool = False  # setup and substitute only: the command then goes on to the next entries and the rules
    substitute: tuple[tuple[str, str], ...] = ()  # (regex, replacement) applied to a prepared command


DOC_COMMANDS: list[Entry] = [
    # skipped
    Entry(
        r"^scripts/demo\.sh\b",
        "installs a venv with pip (internet); tests/test_compare_demo_script.py runs it with ONENET_SMALL=1",
        skip=True,
    ),
    Entry(
        r"^scripts/bench_frontier\.sh\b",
        "the frontier sweep with tiny settings (ONENET_SMALL=1: coarse demo data, 1 iteration) for two networks",
        replace='ONENET_SMALL=1 PYTHON=python FRONTIER_NETWORKS="onenet_ed4 segresnet" FRONTIER_JOBS=1 '
        "scripts/bench_frontier.sh && test -s reports/frontier_small/frontier.png "
        "&& grep -q 'frontier.png' reports/frontier_small/report.md",
    ),
    Entry(r"^scripts/test\.sh\b|^pytest\b", "the test suite itself (CI runs scripts/test.sh)", skip=True),
    Entry(r"^pip3? install\b", "internet (PyPI)", skip=True, standing=True),
    Entry(r"^(curl|wget|git clone)\b", "internet", skip=True, standing=True),
    Entry(r"^onenet-med data download\b", "internet (MSD download); tiny synthetic MSD trees stand in", skip=True),
    Entry(r"\btrt_export\b|--device cuda\b|\bnvidia-smi\b", "needs a GPU", skip=True, standing=True),
    Entry(
        r"\bonenet-med compare\b.*reports/paper/",
        "the paper's protocol: full trainings of 6 networks on the "
        "real datasets (GPU); the same compare command runs above with tiny settings",
        skip=True,
    ),
    Entry(
        r"^torchrun\b.*multi_gpu_train\.json",
        "the same multi_gpu_train.json command runs in bundles/common/docs/usage.md (2 CPU processes); one DDP run "
        "is enough",
        skip=True,
        docs="bundles/onenet_*/docs/README.md",
    ),
    Entry(
        r"\bverify_metadata\b(?!.*--filepath)",
        "internet (downloads the schema named in metadata.json); the offline check with --filepath runs in "
        "bundles/README.md",
        skip=True,
    ),
    Entry(r"^onenet-med compare --iterations-per-epoch 20$", "an option named in a sentence, not a command", skip=True),
    Entry(r"^cp -r$", "a command named in a sentence, not a command", skip=True),
    # prepared (placeholders and the user's own files), then run by the general rules
    Entry(
        r"^B=path/to/onenet_heart$",
        "the user's copy of the bundle: bundles/onenet_heart copied to path/to/onenet_heart",
        setup=_bundle_elsewhere,
        prepare=True,
    ),
    Entry(
        r"--dataset_dir PATH\b",
        "PATH is a placeholder: the tiny heart data",
        prepare=True,
        substitute=((r"--dataset_dir PATH\b", "--dataset_dir data/Task02_Heart"),),
    ),
    Entry(
        r"\bscan\.nii\.gz\b",
        "scan.nii.gz and more_scans/ are the user's own: tiny volumes stand in",
        setup=_scans("scan.nii.gz", "more_scans/la_102.nii.gz"),
        prepare=True,
    ),
    Entry(
        r"^onenet-med predict --bundle \$B .*\bscans/",
        "scans/ is the user's own: tiny volumes stand in",
        setup=_scans("scans/la_101.nii.gz"),
        prepare=True,
        docs="bundles/*",  # bundles/README.md and bundles/common/docs/usage.md
    ),
    Entry(
        r"\bnew_scans/",
        "new_scans/ is the user's own: tiny volumes of the dataset's kind stand in",
        setup=_scans("new_scans/hippo_201.nii.gz", task=HIPPOCAMPUS),
        prepare=True,
    ),
    Entry(
        r"\bdata/TaskXX_Name\b",
        "TaskXX_Name is a placeholder: the Hippocampus-like task of no registered kind",
        prepare=True,
        substitute=((r"\bdata/TaskXX_Name\b", "data/Task04_Hippocampus"),),
    ),
    Entry(
        r"file:///path/to/dist/",
        "/path/to/dist/ is a placeholder: the dist/ the export above wrote",
        prepare=True,
        substitute=((r"file:///path/to/dist/", "file://$PWD/dist/"),),
    ),
    Entry(
        r"--dataset_dir ~/data/Task02_Heart\b",  # after `cd /anywhere && `
        "/anywhere and ~/data are placeholders: a folder and a copy of the tiny heart data under HOME",
        setup=_home_data,
        prepare=True,
        substitute=((r"^cd /anywhere && ", "cd ~/anywhere && "),),
    ),
    # adapted
    Entry(
        r"^tar -xf VOCtrainval_11-May-2012\.tar\b",
        "the archive is downloaded by hand: a tiny one with the real layout stands in",
        setup=_voc_archive,
    ),
    Entry(
        r"^tar -xzf images\.tar\.gz\b",
        "the archives are downloaded by hand: tiny ones with the real layout stand in",
        setup=_pets_archives,
    ),
    Entry(
        r"^onenet-med predict\b.*\bscans/ more/la_031\.nii\.gz",
        "scans/ and more/la_031.nii.gz are the user's own: tiny volumes stand in",
        setup=_scans("scans/la_101.nii.gz", "more/la_031.nii.gz"),
        append=TINY_PREDICT,
    ),
    Entry(
        r"^cp -r bundles/onenet_heart DEST$",
        "DEST is a placeholder: copy the trained bundle, check it holds real files, predict with the copy alone "
        "(outputs inside the copy)",
        replace="cp -r bundles/onenet_heart copied_bundle && test ! -L copied_bundle/configs/train.json "
        "&& python -m monai.bundle run --config_file copied_bundle/configs/inference.json "
        "--dataset_dir data/Task02_Heart --num_workers 0 && ls copied_bundle/output/predictions/*_seg.nii.gz",
    ),
    # benchmark scripts: tiny sizes, one repeat
    Entry(
        r"^python scripts/bench_networks\.py\b",
        "tiny benchmark",
        append="--networks onenet_ed4 unet4 --size 32 --repeats 1 --warmup 0 --threads 1",
    ),
    Entry(
        r"^python scripts/bench_train\.py\b",
        "tiny benchmark",
        append="--networks onenet_ed4 unet4 --features 4 "
        "--spatial-size 32 --batch-size 4 --iterations 1 --warmup 0 --cases 4 --shape 32 32 4 --threads 1",
    ),
    Entry(
        r"^python scripts/bench_predict\.py\b",
        "tiny benchmark",
        append="--size 32 --slices 3 --networks onenet_ed4 --batch-slices 2",
    ),
    Entry(
        r"^python scripts/receptive_field\.py\b",
        "tiny measurement",
        append="--networks onenet_ed4 onenet_ed4_ctx --size 64 --width 4",
    ),
    Entry(
        r"^python scripts/bench_loader\.py\b",
        "tiny benchmark",
        append="--volumes 2 --shape 64 64 8 --seconds 1 --workers 0 --train-steps 1",
    ),
    Entry(
        r"^python scripts/bench_onnx\.py speed\b",
        "tiny benchmark",
        append="--width 4 --shape 1 3 32 32 --threads 1 --repeats 1 --warmup 0 --calibration-slices 2",
    ),
    Entry(
        r"^python scripts/bench_context\.py\b",
        "tiny benchmark",
        append="--levels 4 --width 4 --size 32 --threads 1 --repeats 1 --warmup 0",
    ),
    Entry(
        r"^python scripts/receptive_field\.py\b",
        "two networks at a tiny size",
        append="--networks onenet_ed4 onenet_ed4_ctx --size 64 --width 4",
    ),
    Entry(
        r"^python scripts/position_task\.py\b",
        "one seed, a few steps (test_position_task in tests/test_networks_context.py trains it for real)",
        append="--seeds 0 --steps 2",
    ),
    Entry(
        r"^python scripts/tta_uncertainty\.py$",
        "the measurement named in the README's table needs a trained demo model: docs/cohort.md runs the full "
        "command after its tiny demo training",
        skip=True,
        docs="README.md",
    ),
    Entry(
        r"^python scripts/tta_uncertainty\.py\b",
        "the tiny demo training above; one held-out case",
        append="--max-cases 1",
    ),
    Entry(
        r"^python scripts/bench_onnx\.py dice\b",
        "tiny benchmark (the tiny demo training above)",
        append=f"--calibration-slices {TINY_CALIBRATION}",
    ),
]


# ------------------------------------------------------------------------------------------ reading the docs


@dataclass
class DocCommand:
    doc: str  # path relative to the checkout
    line: int  # 1-based line where the command starts
    text: str  # the command, continuation lines joined, comments removed
    inline: bool = False  # from an inline `code span` rather than a fenced block

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def doc_files(root: Path = ROOT) -> list[str]:
    found = {str(p.relative_to(root)) for pattern in DOC_GLOBS for p in root.glob(pattern) if p.is_file()}
    return sorted(found, key=lambda p: (p.count("/"), p))


def strip_comment(line: str) -> str:
    """``line`` without its shell comment: a ``#`` that starts a word outside quotes (``--a#b`` is no comment)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


_OPENERS, _CLOSERS = {"for", "while", "until", "if", "case"}, {"done", "fi", "esac"}


def shell_commands(lines: list[str], first_line: int, console: bool = False) -> list[tuple[int, str]]:
    """``(line, command)`` of a shell block: comments removed, ``\\`` continuations joined, ``for ... done`` and
    ``if ... fi`` kept whole (one command, lines joined by newlines); ``console`` blocks keep the ``$ `` lines."""
    logical: list[tuple[int, str]] = []  # continuation lines joined
    pending: list[str] = []
    for offset, raw in enumerate(lines):
        if console and not pending:
            if not raw.lstrip().startswith("$ "):
                continue
            raw = raw.lstrip()[2:]
        text = strip_comment(raw)
        if not text.strip() and not pending:
            continue
        if not pending:
            start = first_line + offset
        if text.endswith("\\"):
            pending.append(text[:-1].strip())
            continue
        logical.append((start, " ".join([*pending, text.strip()]).strip()))
        pending = []
    if pending:
        logical.append((start, " ".join(pending)))
    out: list[tuple[int, str]] = []
    group: list[str] = []
    depth = 0
    for start_line, text in logical:
        words = re.findall(r"[\w-]+", text)
        if not group:
            group_start = start_line
        group.append(text)
        depth += sum(word in _OPENERS for word in words[:1]) - sum(word in _CLOSERS for word in words)
        if depth <= 0:
            out.append((group_start, "\n".join(group)))
            group, depth = [], 0
    if group:
        out.append((group_start, "\n".join(group)))
    return out


_FENCE = re.compile(r"^ {0,3}(```|~~~)\s*([\w+-]*)")
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def code_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """``(first content line, language, lines)`` of every fenced block."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match:
            fence, language = match.group(1), match.group(2).lower()
            end = next((j for j in range(i + 1, len(lines)) if lines[j].lstrip().startswith(fence)), len(lines))
            blocks.append((i + 2, language, lines[i + 1 : end]))
            i = end + 1
        else:
            i += 1
    return blocks


def is_inline_command(span: str) -> bool:
    """An inline span is a command when it starts with a command word and has an argument that is more than a
    sub-command name (``onenet-med predict`` and ``scripts/demo.sh`` in a sentence are mentions)."""
    try:
        words = shlex.split(span)
    except ValueError:
        return False
    while words and re.match(r"^\w+=", words[0]):  # OMP_NUM_THREADS=2 python ...
        words = words[1:]
    if not words or words[0] not in COMMAND_WORDS:
        return False
    return any(re.search(r"[-/=.]", word) and word != "..." for word in words[1:])


def extract_commands(doc: str, root: Path = ROOT) -> list[DocCommand]:
    """Every shell command of ``doc``, in reading order."""
    text = (root / doc).read_text()
    found: list[DocCommand] = []
    fenced_lines: set[int] = set()
    for first, language, lines in code_blocks(text):
        fenced_lines.update(range(first - 1, first + len(lines) + 1))
        if language in SHELL_LANGUAGES:
            for line, command in shell_commands(lines, first, console=language == "console"):
                found.append(DocCommand(doc, line, command))
    for number, line in enumerate(text.splitlines(), start=1):
        if number in fenced_lines:
            continue
        for span in _INLINE.findall(line):
            if is_inline_command(span):
                found.append(DocCommand(doc, number, span.strip(), inline=True))
    return sorted(found, key=lambda c: c.line)


# ------------------------------------------------------------------------------------------------- the plans


@dataclass
class Plan:
    action: str  # "run", "skip", "context" (a variable assignment, kept for later commands), "unhandled"
    script: str = ""  # what bash runs
    reason: str = ""
    setups: list[Callable[[Path], None]] = field(default_factory=list)  # run in order before the command
    rule: str = ""


def _core(text: str) -> str:
    """The command without leading ``VAR=value`` assignments (``OMP_NUM_THREADS=1 python ...`` -> ``python ...``)
    and a leading ``cd DIR &&`` (``cd /anywhere && python ...`` -> ``python ...``)."""
    text = re.sub(r"^(\w+=(\"[^\"]*\"|'[^']*'|\S*)\s+)+", "", text.strip())
    return re.sub(r"^cd \S+ && ", "", text)


def _bundle_settings(core: str) -> str:
    settings = dict(TINY)
    if re.search(r"--resume\s+(true|True|1)\b", core):
        settings["max_epochs"] = 2  # something to resume into
    return " ".join(f"--{key} {value}" for key, value in settings.items())


GENERAL_RULES: list[tuple[str, str, Callable[[str], str]]] = [
    # (name, regex on the command's core, what to append)
    ("bundle run", r"^(python3? -m monai\.bundle run|torchrun\b.* -m monai\.bundle run)\b", _bundle_settings),
    (
        "bundle verb",
        r"^python3? -m monai\.bundle \w+\b.*--config_file",
        lambda _: f"--network_def#features {TINY_WIDTH}",
    ),
    ("bundle verb", r"^python3? -m monai\.bundle \w+\b", lambda _: ""),
    ("predict", r"^onenet-med predict\b", lambda _: TINY_PREDICT),
    ("compare", r"^onenet-med compare\b", lambda _: TINY_COMPARE),
    ("profile", r"^onenet-med profile\b", lambda _: TINY_PROFILE),
    ("demo data", r"^onenet-med data demo\b", lambda _: "--step 4"),
    ("export", r"^onenet-med export\b", lambda _: f"--calibration-slices {TINY_CALIBRATION}"),
    (
        "as written",
        r"^onenet-med (data check|bundle export|bundle sync|--help|--version)\b|^(mkdir|ls|cat|echo|test)\b",
        lambda _: "",
    ),
]


def plan(command: DocCommand) -> Plan:
    text, setups, prepared, rules = command.text, [], [], []
    for entry in DOC_COMMANDS:
        if not (fnmatch.fnmatch(command.doc, entry.docs) and re.search(entry.pattern, _core(text), re.S)):
            continue
        if entry.skip:
            return Plan("skip", reason=entry.reason, rule=f"DOC_COMMANDS: {entry.pattern}")
        setups += [entry.setup] if entry.setup is not None else []
        rules.append(f"DOC_COMMANDS: {entry.pattern}")
        if entry.prepare:
            for pattern, replacement in entry.substitute:
                text = re.sub(pattern, replacement, text)
            prepared.append(entry.reason)
            continue
        script = entry.replace if entry.replace is not None else text
        script = f"{script} {entry.append}".strip()
        return Plan("run", script, "; ".join([*prepared, entry.reason]), setups, rule=", ".join(rules))
    core = _core(text)
    if re.fullmatch(r"(\w+=(\"[^\"]*\"|'[^']*'|\S*)\s*)+", text):
        reason = "; ".join([*prepared, "variable for the following commands"])
        return Plan("context", text, reason, setups, rule=", ".join([*rules, "assignment"]))
    for name, pattern, tiny in GENERAL_RULES:
        if re.search(pattern, core):
            script = text
            if name == "compare":  # quality bars a one-iteration model cannot meet
                script = re.sub(r"\s--check\s+(\"[^\"]*\"|'[^']*'|\S+)", "", script)
            extra = tiny(core)
            reason = "; ".join([*prepared, f"+ tiny settings ({name})" if extra else "as written"])
            return Plan("run", f"{script} {extra}".strip(), reason, setups, rule=", ".join([*rules, name]))
    return Plan(
        "unhandled",
        reason=f"{command.where}: no rule runs `{command.text}`: add a general rule or an entry to DOC_COMMANDS "
        "in tests/test_docs.py (a tiny adaptation, or a skip with its reason)",
    )


def all_commands(root: Path = ROOT) -> list[DocCommand]:
    return [command for doc in doc_files(root) for command in extract_commands(doc, root)]


# --------------------------------------------------------------------------------- fast tests (no command runs)


def test_every_documented_command_has_a_plan():
    commands = all_commands()
    assert len(commands) > 40
    unhandled = [plan(c).reason for c in commands if plan(c).action == "unhandled"]
    assert not unhandled, "\n".join(unhandled)


def test_every_exception_is_used():
    """An entry of DOC_COMMANDS that matches no documented command is stale."""
    cores = [(c.doc, _core(c.text)) for c in all_commands()]
    for entry in (e for e in DOC_COMMANDS if not e.standing):
        used = any(fnmatch.fnmatch(doc, entry.docs) and re.search(entry.pattern, core, re.S) for doc, core in cores)
        assert used, f"DOC_COMMANDS entry {entry.pattern!r} matches no command of the docs: remove it"


def test_every_code_block_declares_its_language():
    """A fence without a language hides commands from this test: write ```bash (or ```text for output)."""
    bare = [
        f"{doc}:{first - 1}" for doc in doc_files() for first, language, _ in code_blocks((ROOT / doc).read_text())
        if not language
    ]  # fmt: skip
    assert not bare, f"code blocks without a language: {bare}"


def test_extraction_on_a_sample(tmp_path):
    sample = """# Title

Run `onenet-med predict` or `python scripts/x.py --fast` here; `scripts/demo.sh` is mentioned.

```bash
B=bundles/x   # a comment
python -m monai.bundle run --config_file $B/a.json \\
    --network_def#features 16 --name "a # not a comment"
for b in p q; do
    echo $b
done
```

```python
print("not shell")
```

```console
$ onenet-med data check data/T --quick
ok: 3 files
```
"""
    (tmp_path / "README.md").write_text(sample)
    commands = extract_commands("README.md", tmp_path)
    assert [(c.line, c.text, c.inline) for c in commands] == [
        (3, "python scripts/x.py --fast", True),
        (6, "B=bundles/x", False),
        (7, 'python -m monai.bundle run --config_file $B/a.json --network_def#features 16 --name "a # not a comment"',
         False),
        (9, "for b in p q; do\necho $b\ndone", False),
        (19, "onenet-med data check data/T --quick", False),
    ]  # fmt: skip
    plans = [plan(c) for c in commands]
    assert [p.action for p in plans] == ["unhandled", "context", "run", "unhandled", "run"]
    assert "README.md:3: no rule runs `python scripts/x.py --fast`" in plans[0].reason
    assert plans[2].script.endswith("--network_def#features 4 --spatial_size 32 --batch_size 4 --num_workers 0 "
                                    "--max_epochs 1 --epoch_length 1 --val_interval 1 --val_fraction 0.5 "
                                    "--bn_refresh_batches 1 --progress false")  # fmt: skip


@pytest.mark.parametrize(
    "text, expected",
    [
        ("python -m monai.bundle run --config_file t.json --resume true", "--max_epochs 2"),
        ("OMP_NUM_THREADS=1 python -m monai.bundle run --config_file t.json", "--max_epochs 1"),
        ("torchrun --standalone --nproc_per_node 2 -m monai.bundle run --config_file t.json", "--epoch_length 1"),
        ("python -m monai.bundle ckpt_export network_def --config_file t.json", "--network_def#features 4"),
        ('onenet-med compare --bundle b --networks n --out o --check "n:dice>=0.9"', "--width 4"),
        ("onenet-med data download --task heart --root data", None),
        ("python scripts/bench_train.py", "--iterations 1"),
        ("cd /tmp/x && python -m monai.bundle run --config_file t.json", "--max_epochs 1"),
        ("onenet-med bundle export --bundle bundles/onenet_heart --out dist/", "--out dist/"),
    ],
)
def test_general_rules(text, expected):
    result = plan(DocCommand("README.md", 1, text))
    if expected is None:
        assert result.action == "skip" and "internet" in result.reason
    else:
        assert result.action == "run" and expected in result.script and "--check" not in result.script


def test_prepared_commands_go_on_to_the_general_rules():
    """Placeholders are substituted and setups collected, then the bundle-run rule appends the tiny settings."""
    usage = "bundles/common/docs/usage.md"
    command = "python -m monai.bundle run --config_file $B/configs/inference.json --input_files \"['scan.nii.gz']\""
    result = plan(DocCommand(usage, 1, command + " --dataset_dir PATH"))
    assert result.action == "run" and len(result.setups) == 1
    assert result.script.startswith(command + " --dataset_dir data/Task02_Heart --network_def#features 4")
    assert result.rule.endswith("bundle run") and "PATH is a placeholder" in result.reason
    assignment = plan(DocCommand(usage, 1, "B=path/to/onenet_heart"))
    assert assignment.action == "context" and assignment.setups == [_bundle_elsewhere]
    moved = "cd /anywhere && python -m monai.bundle run --config_file c.json --dataset_dir ~/data/Task02_Heart"
    moved = plan(DocCommand("bundles/README.md", 1, moved))
    assert moved.script.startswith("cd ~/anywhere && python -m monai.bundle run --config_file c.json --dataset_dir")
    assert moved.setups == [_home_data] and "--network_def#features 4" in moved.script


def test_the_workspace_copy_holds_every_generated_bundle_file():
    """The docs run in a copy made of what git lists: every file a bundle gets from bundles/common is among them."""
    from onenet_med.bundle.sync import bundle_folders, generated_files

    listed = set(checkout_files())
    generated = generated_files(ROOT / "bundles" / "common")
    bundles = bundle_folders(ROOT / "bundles")
    assert len(bundles) >= 7
    missing = [str(b / rel) for b in bundles for rel in generated if str((b / rel).relative_to(ROOT)) not in listed]
    assert not missing, f"generated bundle files git does not list (the docs test's copy would lack them): {missing}"


# ---------------------------------------------------------------------------------------- slow: run them all


@dataclass
class Outcome:
    where: str
    status: str  # "ran", "failed", "skipped", "context"
    command: str
    detail: str = ""
    seconds: float = 0.0


RESULTS: list[Outcome] = []


def listing() -> list[str]:
    """The terminal summary (tests/conftest.py prints it): every documented command and what happened to it."""
    width = max((len(o.where) for o in RESULTS), default=10)
    lines = []
    for o in RESULTS:
        head = f"{o.where:<{width}}  {o.status:<8}"
        timing = f" {o.seconds:.0f} s," if o.status in ("ran", "failed") else ""
        command = o.command.replace("\n", " ")
        command = command if len(command) <= 110 else command[:107] + "..."
        lines.append(f"{head} {command}  [{timing} {o.detail}]".replace("[ ", "["))
    return lines


@dataclass
class Workspace:
    path: Path
    context: list[str] = field(default_factory=list)  # variable assignments seen so far in the doc


def checkout_files() -> list[str]:
    """The checkout's files as git lists them: tracked and untracked-not-ignored (relative paths)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return list(filter(None, listed.split("\0")))


def home_dir(workspace: Path) -> Path:
    """The ``HOME`` the commands of a workspace see."""
    return workspace / "home"


def make_workspace(path: Path) -> Workspace:
    """A copy of the checkout (tracked and untracked-not-ignored files, links kept) with tiny datasets in data/:
    MSD Heart, Brain, Lung, a Hippocampus-like task for ``onenet_msd``, VOC, Pets (the demo's is built by the docs'
    own command)."""
    from tests.data_trees import make_msd_task, make_pets_tree, make_voc_tree

    for rel in checkout_files():
        source, target = ROOT / rel, path / rel
        if not os.path.lexists(source):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)
    for task in ("heart", "brain", "lung", HIPPOCAMPUS):
        make_msd_task(path / "data", task, n_train=4, n_test=1)
    home_dir(path).mkdir()
    make_voc_tree(path / "data")
    make_pets_tree(path / "data")
    return Workspace(path)


def run_environment(workspace: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(workspace)  # the copy's onenet_med: bundle_root and dataset_dir point into the copy
    env["HOME"] = str(home_dir(workspace))  # ~/bundles of the docs: inside the copy
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return env


DOCUMENTED = [(command.where, command) for command in all_commands()]


_WORKSPACES: dict[str, Workspace] = {}


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    """The workspace of a doc, made at its first command (the docs' commands build on each other)."""
    _WORKSPACES.clear()

    def get(doc: str) -> Workspace:
        if doc not in _WORKSPACES:
            _WORKSPACES[doc] = make_workspace(tmp_path_factory.mktemp(re.sub(r"\W+", "_", doc)))
        return _WORKSPACES[doc]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("where, command", DOCUMENTED, ids=[where for where, _ in DOCUMENTED])
def test_documented_command(where, command, workspaces):
    """One documented command, in its doc's workspace, after the doc's earlier commands."""
    the_plan = plan(command)
    if the_plan.action == "unhandled":
        RESULTS.append(Outcome(where, "failed", command.text, "no rule"))
        pytest.fail(the_plan.reason)
    if the_plan.action == "skip":
        RESULTS.append(Outcome(where, "skipped", command.text, the_plan.reason))
        pytest.skip(f"{where}: {the_plan.reason}: {command.text.splitlines()[0]}")
    workspace = workspaces(command.doc)
    for setup in the_plan.setups:
        setup(workspace.path)
    if the_plan.action == "context":
        workspace.context.append(the_plan.script)
        RESULTS.append(Outcome(where, "context", command.text, the_plan.reason))
        return
    script = "\n".join(["set -eo pipefail", *workspace.context, the_plan.script])
    start = time.perf_counter()
    done = subprocess.run(
        ["bash", "-c", script], cwd=workspace.path, env=run_environment(workspace.path), capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    status = "ran" if done.returncode == 0 else "failed"
    RESULTS.append(Outcome(where, status, command.text, the_plan.reason, seconds))
    assert done.returncode == 0, (
        f"{where}: the documented command failed (exit {done.returncode}) as run with tiny settings:\n"
        f"{the_plan.script}\n--- stdout (end) ---\n{done.stdout[-3000:]}\n--- stderr (end) ---\n{done.stderr[-5000:]}"
    )
