"""Every repository path that a comment, docstring or doc names exists (folders, files, `dir/module.name`
and `package.module.name`): a moved module leaves no stale pointer behind. Paths are tokens that
start with one of the project's top-level folders or packages; placeholders (<row>, *, my_...) and
paths inside run or data folders are not repository files."""
import re
import subprocess

from conftest import ROOT

TOP = ("models", "datasets", "utils", "docs", "bench", "tests", "img", "results", ".ci")
PATH = re.compile(r"(?<![\w./$-])((?:%s)/[\w./-]*\w)" % "|".join(re.escape(t) for t in TOP))
DOTTED = re.compile(r"(?<![\w./\"-])((?:models|datasets|utils)(?:\.\w+)+)")
PLACEHOLDER = re.compile(r"my_|<|\*|\{|XX")
GENERATED = ("results/runs", "results/demo", "results/table", "results/curves", "results/figures",
             "tests/data/gesture_hdf5/")


def tracked_text_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.split() if f.endswith((".py", ".md", ".sh")) or f == ".ci/run"]


def exists(p: str) -> bool:
    """A file or folder, or ``dir/module.name[.attr]``: module.py exists and defines ``name``."""
    if (ROOT / p).exists():
        return True
    folder, _, last = p.rpartition("/")
    module, _, attr = last.partition(".")
    src = ROOT / folder / f"{module}.py"
    if not attr or not src.is_file():
        return False
    name = attr.split(".")[0]
    return re.search(rf"^\s*(def|class) {name}\b|^{name}\s*[:=]", src.read_text(), re.M) is not None


def module_exists(dotted: str) -> bool:
    """``package.module[.name...]``: the longest prefix that is a module or package exists, and
    the first name after it is defined there (or is a sub-module)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            if i == len(parts):
                return True
            src = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
            return exists(f"{'/'.join(parts[:i])}.{parts[i]}") if src.name != "__init__.py" else \
                re.search(rf"\b{parts[i]}\b", src.read_text()) is not None
    return False


def test_every_path_named_in_comments_and_docs_exists():
    missing = []
    for f in tracked_text_files():
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for m in PATH.finditer(line):
                p = m.group(1).rstrip(".")
                if PLACEHOLDER.search(line[m.start():m.end() + 1]) or p.startswith(GENERATED):
                    continue
                if not exists(p):
                    missing.append(f"{f.relative_to(ROOT)}:{n}: {p}")
            for m in DOTTED.finditer(line):
                if not PLACEHOLDER.search(m.group(1)) and not module_exists(m.group(1)):
                    missing.append(f"{f.relative_to(ROOT)}:{n}: {m.group(1)}")
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_markdown_link_to_the_repository_resolves():
    bad = []
    for f in tracked_text_files():
        if f.suffix != ".md":
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", target):
                    continue                                   # http:, https:, mailto:
                path, _, anchor = target.partition("#")
                dest = (f.parent / path).resolve() if path else f
                if not dest.exists():
                    bad.append(f"{f.relative_to(ROOT)}:{n}: {target} (no such file)")
                elif anchor and dest.suffix == ".md":
                    heads = {slug(h) for h in re.findall(r"^#+ (.*)$", dest.read_text(), re.M)}
                    if anchor not in heads:
                        bad.append(f"{f.relative_to(ROOT)}:{n}: {target} (no such heading)")
    assert not bad, "broken links:\n" + "\n".join(bad)
