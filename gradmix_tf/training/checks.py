"""Checks that a GradMixModel and a MultiStreamData belong together.

`model.fit` would otherwise train a source through the wrong head (labels
silently meaning other classes) or fail deep inside a traced step.
"""

from __future__ import annotations

from gradmix_tf.data.streams import DataError, MultiStreamData


def check_model_matches_data(model, data: MultiStreamData) -> None:
    """Raises DataError naming the first stream that does not fit `model`.

    Checks: the target's class names, the number of sources and each source's
    name and class names (in stream order), the image shape the model was
    built for, and the size of the pseudo-label table.
    """
    if tuple(model.target_class_names) != tuple(data.target_class_names):
        raise DataError(
            f"the target stream '{data.target.labelled.name}' names classes "
            f"{list(data.target_class_names)} but the model's target head was made for "
            f"{list(model.target_class_names)}."
        )
    if len(model.source_class_names) != len(data.sources):
        raise DataError(
            f"the model has {len(model.source_class_names)} source heads/streams "
            f"({list(model.source_names)}) but the data has {len(data.sources)} sources "
            f"({[s.name for s in data.sources]})."
        )
    for k, (stream, classes, name) in enumerate(
        zip(data.sources, model.source_class_names, model.source_names)
    ):
        if stream.name != name:
            raise DataError(
                f"source {k} is '{stream.name}' in the data but '{name}' in the model: "
                "pass the sources in the same order to both."
            )
        if tuple(stream.class_names) != tuple(classes):
            raise DataError(
                f"stream '{stream.name}' names classes {list(stream.class_names)} but its head "
                f"in the model was made for {list(classes)}: its labels would mean other classes."
            )
    built_shape = getattr(model, "_build_shapes_dict", None) or {}
    input_shape = next(iter(built_shape.values()), None)
    if input_shape is not None and tuple(input_shape[1:]) != tuple(data.image_shape):
        raise DataError(
            f"the model was built for images of shape {tuple(input_shape[1:])} but the streams "
            f"have {tuple(data.image_shape)}: build it with (None, *data.image_shape)."
        )
    unlabelled = data.target.unlabelled
    if model.num_unlabelled and (unlabelled is None or unlabelled.size != model.num_unlabelled):
        size = 0 if unlabelled is None else unlabelled.size
        raise DataError(
            f"the model's pseudo-label table has {model.num_unlabelled} entries but the data has "
            f"{size} unlabelled target examples: make the model with num_unlabelled={size}."
        )
