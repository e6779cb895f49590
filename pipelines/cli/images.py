"""From image files to detections in this process, for ``mrcnn predict`` and ``mrcnn eval``: the images a
command line names, their names and ground-truth ids, the predictor, and the loop over the images."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pipelines.cli.errors import CLIError
from pipelines.cli.options import resolved_model


def expand_images(inputs: Sequence[str]) -> list[Path]:
    """Files as given; folders expanded to the images they contain (sorted).

    Raises:
        CLIError: a folder without images.
    """
    from pipelines.common.storage import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CLIError(f"{path}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        else:
            paths.append(path)
    return paths


def image_names(inputs: Sequence[str]) -> list[tuple[Path, str]]:
    """(path, name) of every image: files as given, folders expanded (sorted). The name is the path relative
    to the images root: to the folder for a folder's images, as typed for a relative file path
    (``cam1/0001.png``), the base name for an absolute one."""
    named: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            named.extend((p, p.relative_to(path).as_posix()) for p in expand_images([item]))
        else:
            named.append((path, path.name if path.is_absolute() else path.as_posix()))
    return named


def match_annotations(annotations: str | None, named: list[tuple[Path, str]]) -> tuple[list[tuple[Path, str]], dict[str, Any]]:
    """With a ground truth: each image's name becomes its ``file_name`` there, matched by path (the name, or
    the whole path where that is longer: ``cam1/0001.png`` is not ``cam2/0001.png``), and the ids
    ``{file_name: image id}``; an image it does not list keeps its name and gets no id. Without: as given, {}.

    Raises:
        CLIError: an ambiguous name (several images share its base name and nothing more of its path).
    """
    if not annotations:
        return named, {}
    from mrcnn.evaluation import load_coco_gt
    from pipelines.batch.evaluate import match_file_names

    images = load_coco_gt(annotations).dataset["images"]
    keys = [name if len(Path(name).parts) >= len(path.parts) else path.as_posix() for path, name in named]
    try:
        matched = match_file_names(images, keys, source=str(annotations))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    file_names = {image["id"]: str(image["file_name"]) for image in images}
    renamed = [(path, file_names[matched[key]] if key in matched else name) for (path, name), key in zip(named, keys)]
    return renamed, {file_names[image_id]: image_id for image_id in matched.values()}


def load_predictor(model: str, *, arch: str | None, device: str, score_threshold: float | None,
                   class_thresholds: dict[int, float] | None = None, tracking_uri: str | None = None):  # fmt: skip
    """A :class:`mrcnn.predictor.Predictor` for a model reference (a file, ``models:/NAME@ALIAS``,
    ``models:/NAME/VERSION``, ``runs:/RUN_ID/path``); a download is removed once the model is loaded.

    Args:
        score_threshold: one global threshold (the class thresholds are then off); None: the predictor's (0.5).
        class_thresholds: None: the per-class thresholds stored with the model (an MLflow Model's
            ``thresholds.json``, else the checkpoint's metadata), if any; ``{}``: none; a mapping
            ``{category_id: score}``: those (:func:`pipelines.cli.options.class_thresholds_option` reads the flag).

    Raises:
        ValueError: an unknown model, alias, version or run, a missing or unreadable file, an unknown ``arch``,
            thresholds naming a category the model lacks.
    """
    import torch

    from mrcnn import runtime
    from mrcnn.predictor import Predictor
    from mrcnn.thresholds import check_class_thresholds
    from pipelines.tracking import model_thresholds

    # This command's choice for its process (mrcnn.runtime): on a CPU malloc keeps freed memory, which is
    # also what makes the Winograd 3x3s pay off.
    winograd = torch.device(device).type == "cpu" and runtime.keep_freed_memory()
    with resolved_model(model, tracking_uri) as path:
        stored = model_thresholds(path) if class_thresholds is None else None
        predictor = Predictor.from_checkpoint(path, arch=arch, device=device, optimize={"winograd": winograd},
                                              class_thresholds=stored)  # fmt: skip
    if score_threshold is not None:
        predictor.score_threshold = score_threshold
        predictor.class_thresholds = {}  # one global threshold
    elif class_thresholds is not None:
        try:
            predictor.class_thresholds = check_class_thresholds(class_thresholds, predictor.categories,
                                                                source="--class-thresholds")  # fmt: skip
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    return predictor


def thresholds_line(predictor, class_thresholds: dict[int, float] | None) -> str:
    """One line saying which score thresholds ``predictor`` applies: stored per-class, given per-class, or global."""
    if predictor.class_thresholds:
        origin = "stored" if class_thresholds is None else "given"
        return (f"score thresholds: {origin} per-class for {len(predictor.class_thresholds)} classes "
                f"(others {predictor.score_threshold:g})")  # fmt: skip
    return f"score threshold: global {predictor.score_threshold:g}"


def _batches(named: list[tuple[Path, str]], batch_size: int, desc: str) -> Iterator[list[tuple[Path, str]]]:
    """``named`` in batches, behind a progress bar over the images (shown when stderr is a terminal)."""
    from pipelines.common.progress import progress

    batch: list[tuple[Path, str]] = []
    for item in progress(named, desc=desc, total=len(named)):
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_images(predictor, named: list[tuple[Path, str]], *, batch_size: int, image_ids: dict[str, int],
                   overlay_dir: str | None, desc: str = "predict images"):  # fmt: skip
    """Predict every readable image of ``(path, name)``, with a progress bar over the images.

    Args:
        image_ids: maps a name to its ground-truth id (the records then carry the ground truth's file_name).
        overlay_dir: where the overlays go (PNG, the name's relative path kept), or None.

    Returns:
        (COCO result records, skipped [(path, reason)] for images that could not be read).
    """
    from tqdm.auto import tqdm

    from mrcnn.data.images import ImageDecodeError, load_image
    from mrcnn.records import coco_result
    from mrcnn.visualize import save_overlay

    results: list[dict[str, Any]] = []
    skipped: list[tuple[Path, str]] = []
    for chunk in _batches(named, batch_size, desc):
        batch, batch_images = [], []
        for path, name in chunk:
            try:
                batch_images.append(load_image(path))
                batch.append((path, name))
            except ImageDecodeError as exc:
                skipped.append((path, str(exc)))
        if not batch_images:
            continue
        for (path, name), image, detections in zip(batch, batch_images, predictor.predict(batch_images)):
            for det in detections:
                results.append(coco_result(det, image_id=image_ids.get(name), file_name=name))
            if overlay_dir:
                # Overlays keep the relative path (cam1/0001.png and cam2/0001.png do not overwrite each other).
                inside = [p for p in Path(name).with_suffix(".png").parts if p not in ("..", "/")]
                target = Path(overlay_dir).joinpath(*inside) if inside else Path(overlay_dir) / f"{path.stem}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                save_overlay(target, image, detections, skeletons=predictor.categories.skeletons)
            tqdm.write(f"{path}: {len(detections)} instances", file=sys.stderr)
    return results, skipped
