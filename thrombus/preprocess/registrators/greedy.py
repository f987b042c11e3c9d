"""Backend `greedy`: the affine mode of PICSL greedy, through its Python package (`picsl-greedy`).

Rigid (6 degrees of freedom) or affine (12), normalised mutual information, greedy's own
multi-resolution pyramid (it halves the grid per level, so the schedule's shrink factors must run
through the powers of two down to 1: 4, 2, 1 gives `-n AxBxC`), one thread and a fixed seed for the
jitter of its sample points when deterministic. Its L-BFGS optimiser needs far fewer iterations than
ANTs' gradient descent: the levels run `ITERATIONS` (the finest last; a schedule with fewer levels, the
fallback, takes the finest ones), whatever ANTs' schedule asks; smoothing per level is greedy's own.

Masks are the brain dilated by `MASK_MARGIN_MM`: on the brain alone, normalised mutual information
has optima far from the truth (TCGA T2 onto T1c ended rotated by 50 degrees; with a 5-10 mm margin it
lands within 0.5 degrees of ANTs), since the brain's edge against CSF and skull is what aligns two
heads. Greedy's result, a 4x4 scanner-RAS matrix from reference point to moving point, is written as the
ITK affine file (LPS) that ANTs writes, so the rest of the step reads and applies it unchanged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from thrombus.preprocess.registrators import Pair, Schedule

if TYPE_CHECKING:
    from thrombus.preprocess.register import RegistrationOptions

log = logging.getLogger(__name__)

#: Packages whose code shapes this backend's transform (recorded with the step).
VERSIONS: tuple[str, ...] = ("picsl-greedy", "SimpleITK")

#: Iterations of greedy's L-BFGS per level, coarsest first (ANTs' gradient descent: 1000, 500, 100).
ITERATIONS: tuple[int, ...] = (100, 50, 10)
#: The brain masks are widened by this much (mm) before they restrict the metric.
MASK_MARGIN_MM = 10.0
#: LPS <-> RAS: ITK files are in LPS, greedy's matrices in RAS.
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
#: What greedy's L-BFGS (Nocedal's MCSRCH) prints, unterminated, when a line search ends without a step that
#: lowers the metric enough: the optimiser stops at its best point so far, which the step then checks as it
#: checks any result (mutual information before and after, the QC flags).
LINE_SEARCH_FAILED = re.compile(
    r"\s*IFLAG=\s*-?\d+\s+LINE SEARCH FAILED\..*?(?:INCORRECT TOLERANCES|$)", re.DOTALL | re.MULTILINE)


def optimise(pair: Pair, options: RegistrationOptions, schedule: Schedule, start: str, prefix: Path) -> Path:
    """One greedy attempt from `start` ("identity", or "centres": the intensity centres of mass matched).

    As with ANTs, the coarse levels run on the reference's own grid and the finest on the metric grid
    (a second greedy run from where the first ended): on a demo pair 4.7 s instead of 7.0 s for all
    levels on the 1 x 1 x 2 mm reference, with the same residual (0.16 against 0.17 mm).
    """
    counts = _iterations(schedule[1])
    initial = None
    if start == "centres":
        initial = Path(f"{prefix}centres.txt")
        np.savetxt(initial, _centres_matrix(pair))  # greedy's own matrix format: 4x4 RAS, plain text
    if pair.metric_fixed is pair.fixed or len(counts) < 2:
        matrix = _run(pair.fixed, pair.fixed_mask, pair.moving, pair.moving_mask, counts, initial, options)
    else:
        coarse = _run(pair.fixed, pair.fixed_mask, pair.moving, pair.moving_mask, counts[:-1] + (0,), initial, options)
        np.savetxt(Path(f"{prefix}coarse.txt"), coarse)
        matrix = _run(pair.metric_fixed, pair.metric_mask, pair.moving, pair.moving_mask, counts[-1:], Path(f"{prefix}coarse.txt"), options)
    return write_itk_affine(pair.ants, matrix, Path(f"{prefix}greedy.mat"))


def _run(fixed: Any, fixed_mask: Any | None, moving: Any, moving_mask: Any | None, counts: tuple[int, ...],
         initial: Path | None, options: RegistrationOptions) -> np.ndarray:
    """One greedy affine run (`counts`: iterations per level, coarsest first; 0 skips a level): its RAS matrix."""
    from picsl_greedy import Greedy3D

    images: dict[str, Any] = {"fixed": _to_sitk(fixed), "moving": _to_sitk(moving), "result": None}
    command = [
        "-i fixed moving -a", f"-dof {6 if options.transform == 'Rigid' else 12}", "-m NMI",
        f"-n {'x'.join(map(str, counts))}", f"-threads {1 if options.deterministic else max(1, int(options.threads))}",
        f"-seed {max(1, int(options.seed))}", "-o result -V 0", f"-ia {initial}" if initial else "-ia-identity",
    ]
    if fixed_mask is not None:
        images["fixed_mask"] = _to_sitk(_widened(fixed_mask))
        command.append("-gm fixed_mask")
    if moving_mask is not None:
        images["moving_mask"] = _to_sitk(_widened(moving_mask))
        command.append("-mm moving_mask")
    greedy = Greedy3D()
    with _captured_stdout() as printed:  # its optimiser prints straight to file descriptor 1
        greedy.execute(" ".join(command), out=io.StringIO(), err=io.StringIO(), **images)
    _report(printed.getvalue(), counts)
    return np.asarray(greedy["result"], dtype=float)


def _report(printed: str, counts: tuple[int, ...]) -> None:
    """The optimiser's own output as log lines: its line-search messages as one line saying what they mean.

    Written raw, each message landed unterminated in the step's log, glued to the next log line; other
    text, which greedy does not print at `-V 0`, is passed on unchanged.
    """
    failures = len(LINE_SEARCH_FAILED.findall(printed))
    rest = LINE_SEARCH_FAILED.sub("", printed).strip()
    if failures:
        log.info("greedy (levels %s): the L-BFGS line search stopped early %d time(s); the optimiser kept its best "
                 "point, checked below like any result", "x".join(map(str, counts)), failures)
    if rest:
        log.info("greedy printed: %s", rest)


def _iterations(shrink: tuple[int, ...]) -> tuple[int, ...]:
    """Iterations per level, coarsest first, for shrink factors that halve the grid per level as greedy does."""
    expected = tuple(2 ** level for level in reversed(range(len(shrink))))
    if tuple(shrink) != expected:
        raise ValueError(f"backend 'greedy' halves the grid per level: shrink factors must be {expected}, not {tuple(shrink)}")
    return (ITERATIONS[0],) * max(0, len(shrink) - len(ITERATIONS)) + ITERATIONS[-len(shrink):]


@contextlib.contextmanager
def _captured_stdout() -> Iterator[io.StringIO]:
    """File descriptor 1 read into a string for the duration (C code writes there, past Python's sys.stdout).

    The string is filled when the block ends, even when it raises, so nothing greedy printed is lost.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    text = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            yield text
        finally:
            sys.stdout.flush()
            _flush_c_stdio()
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            text.write(sink.read().decode("utf-8", errors="replace"))


def _flush_c_stdio() -> None:
    """C's stdio buffers written out (fflush(NULL)): a file is fully buffered, and what greedy left there would
    otherwise reach the real stdout after the redirection ends."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


def _to_sitk(image: Any) -> Any:
    """An ANTs image as a SimpleITK one (same voxels, spacing, origin and direction; float32)."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(np.ascontiguousarray(image.numpy().astype(np.float32).transpose(2, 1, 0)))
    out.SetSpacing(tuple(float(s) for s in image.spacing))
    out.SetOrigin(tuple(float(o) for o in image.origin))
    out.SetDirection(tuple(float(d) for d in np.asarray(image.direction).ravel()))
    return out


def _widened(mask: Any) -> Any:
    """The mask grown by `MASK_MARGIN_MM` in every direction (Euclidean, in mm)."""
    from scipy.ndimage import distance_transform_edt

    inside = mask.numpy() > 0
    grown = distance_transform_edt(~inside, sampling=tuple(float(s) for s in mask.spacing)) <= MASK_MARGIN_MM
    return mask.new_image_like(grown.astype(np.float32))


def _centres_matrix(pair: Pair) -> np.ndarray:
    """The RAS translation that moves the fixed image's intensity centre of mass onto the moving one's."""
    ants = pair.ants
    shift = np.asarray(ants.get_center_of_mass(pair.moving), float) - np.asarray(ants.get_center_of_mass(pair.fixed), float)
    matrix = np.eye(4)
    matrix[:3, 3] = FLIP[:3, :3] @ shift
    return matrix


def write_itk_affine(ants: ModuleType, ras: np.ndarray, target: Path) -> Path:
    """Write a 4x4 scanner-RAS matrix (reference point -> moving point) as an ITK affine file (LPS)."""
    lps = FLIP @ ras @ FLIP
    transform = ants.create_ants_transform(
        transform_type="AffineTransform", precision="double", dimension=3,
        matrix=lps[:3, :3], translation=lps[:3, 3], center=np.zeros(3),
    )
    ants.write_transform(transform, str(target))
    return target
