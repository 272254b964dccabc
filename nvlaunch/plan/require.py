"""NVIDIA_REQUIRE_* checks: does this host's driver satisfy what the image asks for?

Semantics of libnvidia-container (src/cli/dsl.c, src/cli/configure.c) and the toolkit
(internal/config/image/cuda_image.go), reference 1.3:

* every variable NVIDIA_REQUIRE_<X> except NVIDIA_REQUIRE_JETPACK* is one requirement;
  all of them must hold.  A legacy image (CUDA_VERSION set, NVIDIA_REQUIRE_CUDA unset)
  gets an extra "cuda>=<major.minor of CUDA_VERSION>".
* inside a value, blanks separate OR-terms and commas AND-ed conditions:
  "cuda>=10.0 brand=tesla,driver>=384,driver<385" means
  cuda>=10.0 OR (brand=tesla AND driver>=384 AND driver<385).
* a condition is `name op value`, op one of = != < <= > >=; names:
  cuda    the driver's CUDA version, cuDriverGetVersion() as major.minor (13000 -> 13.0);
  driver  the kernel module version (580.159.04);
  arch    a GPU's compute capability (9.0);
  brand   a GPU's brand (tesla, geforce, ...), case-insensitive, = and != only.
  Versions compare numerically field by field, trailing ".0" fields ignored.
* conditions are checked for every selected GPU, or once without a GPU.  Without GPU
  information arch and brand pass -- libnvidia-container does the same with no device,
  and nvlaunch has no GPU information on its fast path (it would take NVML), so they
  pass unless the caller passes `gpus` with that information.
* NVIDIA_DISABLE_REQUIRE, true per Go's strconv.ParseBool, skips every check.
"""
from __future__ import annotations

import re

from nvlaunch.core.errors import RequirementError, quote
from nvlaunch.core.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

PREFIX = "NVIDIA_REQUIRE_"
SKIPPED_PREFIX = "NVIDIA_REQUIRE_JETPACK"
DISABLE = "NVIDIA_DISABLE_REQUIRE"

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

OPS = ("!=", "<=", ">=", "=", "<", ">")       # two-character ones first
KEYS = ("cuda", "driver", "arch", "brand")
_ATOM = re.compile(r"^([A-Za-z_]+)\s*(!=|<=|>=|=|<|>)\s*(\S.*)$", re.DOTALL)

CUDA_HINT = ("please update your driver to a newer version, or use an earlier cuda "
             "container")


def parse_bool(text: str) -> bool | None:
    """Go's strconv.ParseBool: True/False, None where Go returns an error."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def disabled(env: Mapping[str, str]) -> bool:
    """NVIDIA_DISABLE_REQUIRE set to a true value (an unparsable value counts as false,
    as in the toolkit's HasDisableRequire)."""
    return bool(parse_bool(env.get(DISABLE, "")))


@record
class Condition:
    key: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"


# A version field as a key that orders as its number does: (digits, digits without the
# leading zeros).  Never int(): it takes other scripts' digits, refuses superscripts
# ("²".isdigit() is true) and numbers of more than 4300 digits.
_Field = tuple[int, str]


def _parse_version(text: str) -> tuple[_Field, ...] | None:
    """"12.2.0" -> keys of (12, 2); None unless every field is ASCII digits."""
    parts = text.strip().split(".")
    if not all(p.isascii() and p.isdigit() for p in parts):
        return None
    nums = [(len(d), d) for d in (p.lstrip("0") for p in parts)]
    while len(nums) > 1 and nums[-1] == (0, ""):
        nums.pop()
    return tuple(nums)


def _compare(a: tuple[_Field, ...], b: tuple[_Field, ...]) -> int:
    return (a > b) - (a < b)


def _holds(cmp: int, op: str) -> bool:
    return {"=": cmp == 0, "!=": cmp != 0, "<": cmp < 0, "<=": cmp <= 0,
            ">": cmp > 0, ">=": cmp >= 0}[op]


def parse_condition(text: str, var: str = "") -> Condition:
    """"cuda>=12.0" -> Condition; RequirementError naming the variable if malformed."""
    m = _ATOM.match(text.strip())
    where = f" in {var}" if var else ""
    if not m:
        raise RequirementError(f"invalid requirement {quote(text)}{where}",
                               hint="want name op value, op one of " + " ".join(OPS))
    key, op, value = m.group(1).lower(), m.group(2), m.group(3).strip()
    if key not in KEYS:
        raise RequirementError(f"invalid requirement {quote(text)}{where}: unknown name {quote(key)}",
                               hint="want one of " + ", ".join(KEYS))
    if key == "brand":
        if op not in ("=", "!="):
            raise RequirementError(f"invalid requirement {quote(text)}{where}: brand takes = or !=")
    elif _parse_version(value) is None:
        raise RequirementError(f"invalid requirement {quote(text)}{where}: {quote(value)} is not a "
                               "version")
    return Condition(key, op, value)


def parse_expression(text: str, var: str = "") -> list[list[Condition]]:
    """An NVIDIA_REQUIRE_* value -> OR-list of AND-lists of conditions."""
    terms = []
    for term in text.split():
        conds = [parse_condition(c, var) for c in term.split(",") if c.strip()]
        if conds:
            terms.append(conds)
    return terms


def requirements(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """[(variable, expression)] to check, sorted by variable name (the toolkit ANDs them,
    so the order only decides which failure is reported)."""
    out = [(k, v) for k, v in env.items()
           if k.startswith(PREFIX) and not k.startswith(SKIPPED_PREFIX) and v.strip()]
    cuda_version = env.get("CUDA_VERSION", "").strip()
    if cuda_version and "NVIDIA_REQUIRE_CUDA" not in env:
        # A legacy CUDA image: require its own CUDA major.minor.
        m = re.match(r"^([0-9]+)\.([0-9]+)", cuda_version)
        if m:
            out.append(("CUDA_VERSION", f"cuda>={m.group(1)}.{m.group(2)}"))
    return sorted(out)


def format_cuda(version: int) -> str:
    """cuDriverGetVersion's 13000 -> "13.0", 12020 -> "12.2"."""
    return f"{version // 1000}.{version % 1000 // 10}"


class _Facts:
    """The host values a condition compares against; cuda is fetched at most once, and
    only when a condition needs it."""

    def __init__(self, driver_version: str, cuda_version_fn: Callable[[], int | None] | None):
        self.driver = driver_version
        self._cuda_fn = cuda_version_fn
        self._cuda: str | None = None
        self._cuda_asked = False

    @property
    def cuda(self) -> str | None:
        if not self._cuda_asked:
            self._cuda_asked = True
            value = self._cuda_fn() if self._cuda_fn is not None else None
            self._cuda = format_cuda(value) if isinstance(value, int) and value > 0 else None
        return self._cuda


def _evaluate(cond: Condition, facts: _Facts, gpu: Mapping[str, str] | None) -> bool:
    if cond.key == "brand":
        have = (gpu or {}).get("brand")
        if have is None:
            return True                     # no GPU information: passes (see module doc)
        return (have.lower() == cond.value.lower()) == (cond.op == "=")
    if cond.key == "arch":
        have = (gpu or {}).get("arch")
        if have is None:
            return True
    elif cond.key == "cuda":
        have = facts.cuda
        if have is None:
            return False                    # unknown CUDA version: cannot be satisfied
    else:
        have = facts.driver
    mine = _parse_version(have)
    want = _parse_version(cond.value)       # a version: parse_condition checked it
    if mine is None or want is None:
        return False
    return _holds(_compare(mine, want), cond.op)


def _message(cond: Condition, var: str, facts: _Facts) -> RequirementError:
    text = f"unsatisfied condition: {cond}"
    if cond.key == "cuda":
        text += ", " + CUDA_HINT
        have = facts.cuda
        detail = f"the driver supports CUDA {have}" if have else \
            "the driver's CUDA version is unknown (no usable libcuda)"
    elif cond.key == "driver":
        detail = f"the driver is {facts.driver}"
    else:
        detail = None
    hint = f"{var}" + (f"; {detail}" if detail else "") + f"; {DISABLE}=true skips the check"
    return RequirementError(text, hint=hint)


def check(env: Mapping[str, str], driver_version: str,
          cuda_version_fn: Callable[[], int | None] | None,
          gpus: Iterable[Mapping[str, str]] = ()) -> None:
    """Raise RequirementError unless every NVIDIA_REQUIRE_* of `env` holds.

    cuda_version_fn() -> cuDriverGetVersion value (13000) or None; called at most once,
    and only if a condition compares cuda.  `gpus`: per selected GPU, a mapping with
    optional "arch" and "brand"; empty means no GPU information (arch/brand pass).
    The error text is libnvidia-container's: "unsatisfied condition: cuda>=X, please
    update your driver to a newer version, or use an earlier cuda container".
    """
    if disabled(env):
        return
    reqs = [(var, parse_expression(value, var)) for var, value in requirements(env)]
    if not reqs:
        return
    facts = _Facts(driver_version, cuda_version_fn)
    devices: list[Mapping[str, str] | None] = list(gpus) or [None]
    for var, terms in reqs:
        if not terms:
            continue
        for gpu in devices:
            first_failure: Condition | None = None
            for conds in terms:
                failed = next((c for c in conds if not _evaluate(c, facts, gpu)), None)
                if failed is None:
                    break                   # this OR-term holds
                if first_failure is None:
                    first_failure = failed
            else:
                assert first_failure is not None    # every term failed: the first one is set
                raise _message(first_failure, var, facts)
