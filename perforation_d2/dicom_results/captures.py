"""Image results of one series for any DICOM viewer, built with highdicom.

* :func:`build_secondary_capture`: the key frame as the model saw it (8-bit, windowed) with the
  box, score and decision burned in (RGB, ``BurnedInAnnotation YES``), in its own series;
* :func:`build_presentation_state`: a Grayscale Softcopy Presentation State that draws the
  trajectory's boxes and scores on the original frames, leaving them untouched.

Both carry the source's patient and study modules, InstitutionName and OperatorsName, like the SR.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ..report.overlays import draw_detection
from .sources import Algorithm, SeriesFinding, SourceImages
from .structured_report import box_polyline

SC_SERIES_NUMBER = 9902
PR_SERIES_NUMBER = 9903
SERIES_DESCRIPTION_SC = "perforation_d2 key frame (research use)"


def caption(finding: SeriesFinding, num_frames: int) -> str:
    """The burned-in line: decision, score against threshold, and the frame as a viewer numbers it."""
    decision = "YES" if finding.present else "no"
    relation = ">=" if finding.present else "<"
    return (f"perforation: {decision}  score {finding.score:.3f} {relation} threshold {finding.threshold:.3f}  "
            f"frame {finding.key_frame + 1}/{num_frames}")


def _orientation(dataset: Dataset) -> tuple[str, str] | None:
    """The source's PatientOrientation when it is a valid pair of directions (the key frame is
    not reoriented, so it stays true for the capture)."""
    value = dataset.get("PatientOrientation")
    if value is None or len(value) != 2:
        return None
    try:
        return tuple(hd.PatientOrientationValuesBiped(v).value for v in value)
    except ValueError:
        return None


def build_secondary_capture(
    finding: SeriesFinding, sources: SourceImages, frames: np.ndarray, algorithm: Algorithm, *,
    series_instance_uid: str | None = None, sop_instance_uid: str | None = None,
) -> Dataset:
    """The key frame of ``frames`` ((F, H, W) uint8) with box and score burned in."""
    key = finding.key_frame
    image = draw_detection(frames[key], finding.key_box, finding.scores[key], caption(finding, len(frames)))
    reference = sources.frame(key)[0]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=np.asarray(image, dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer="perforation_d2",
        patient_orientation=_orientation(reference) or ("L", "F"),
        series_description=SERIES_DESCRIPTION_SC,
        software_versions=algorithm.version,
        institution_name=reference.get("InstitutionName") or None,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
    )
    if _orientation(reference) is None:
        sc.PatientOrientation = None  # Type 2: unknown (highdicom needs a value to build the image)
    _copy_laterality(reference, sc)
    copy_operators(reference, sc)
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = f"{algorithm.name} {algorithm.version}: key frame with detection burned in"
    return sc


def build_presentation_state(
    finding: SeriesFinding, sources: SourceImages, algorithm: Algorithm, *,
    series_instance_uid: str | None = None, sop_instance_uid: str | None = None,
) -> Dataset:
    """A GSPS drawing each trajectory box (and its score) on its original frame."""
    layer = hd.pr.GraphicLayer(layer_name="PERFORATION", order=1, description="perforation_d2 detection")
    annotations = []
    for frame in finding.trajectory:
        dataset, frame_number = sources.frame(frame)
        x0, y0, _, _ = finding.boxes_xyxy[frame]
        annotations.append(hd.pr.GraphicAnnotation(
            referenced_images=[dataset], graphic_layer=layer, referenced_frame_number=frame_number,
            graphic_objects=[hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=box_polyline(finding.boxes_xyxy[frame]),
                units=hd.pr.AnnotationUnitsValues.PIXEL)],
            text_objects=[hd.pr.TextObject(
                text_value=f"{finding.scores[frame]:.2f}", units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=(float(x0), float(y0)), anchor_point_visible=False)],
        ))
    pr = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=sources.datasets,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=PR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer="perforation_d2",
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number="none",
        content_label="PERFORATION",
        content_description="perforation_d2 detection (research use)",
        graphic_annotations=annotations or None,
        graphic_layers=[layer] if annotations else None,
        institution_name=sources.first.get("InstitutionName") or None,
        modality_lut_transformation=_modality_lut(sources.first),
        voi_lut_transformations=[_voi_lut(sources.first)],
    )
    _copy_laterality(sources.first, pr)
    copy_operators(sources.first, pr)
    return pr


def _copy_laterality(source: Dataset, result: Dataset) -> None:
    """Laterality (General Series, Type 2C): the source's, else present and empty (unknown)."""
    if "Laterality" not in result:
        result.Laterality = source.get("Laterality") or None


# highdicom derives these two from enhanced (functional-group) images only; XA/XRF runs are often
# classic multi-frame, so they are given explicitly, from the first instance of the series.
def _modality_lut(dataset: Dataset) -> hd.ModalityLUTTransformation:
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope is None or intercept is None:
        slope, intercept = 1, 0
    return hd.ModalityLUTTransformation(rescale_intercept=float(intercept), rescale_slope=float(slope),
                                        rescale_type=dataset.get("RescaleType") or "US")


def _first(value) -> float:
    return float(value[0]) if isinstance(value, MultiValue) else float(value)


def _voi_lut(dataset: Dataset) -> hd.pr.SoftcopyVOILUTTransformation:
    """The source's first window, else one spanning every stored value."""
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is not None and width is not None:
        return hd.pr.SoftcopyVOILUTTransformation(window_center=_first(center), window_width=_first(width))
    levels = 2 ** int(dataset.get("BitsStored") or 8)
    return hd.pr.SoftcopyVOILUTTransformation(window_center=levels / 2, window_width=float(levels))


def copy_operators(source: Dataset, result: Dataset) -> None:
    """OperatorsName of the acquisition (General Series, Type 3) onto a result, so that the PACS
    files the result with who acquired the run it describes."""
    if source.get("OperatorsName"):
        result.OperatorsName = source.OperatorsName
