"""Shared helpers of the video tests: where the real clips are, and skips when they are not."""

from __future__ import annotations

import csv
import os
import shutil

import pytest

from gradmix_tf.datasets import hmdb51, kinetics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_VIDEO_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "video")

HMDB51_WAVE = (
    "TrumanShow_wave_f_nm_np1_fr_med_26.avi",
    "RATRACE_wave_f_nm_np1_fr_goo_37.avi",
    "SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi",
)
HMDB51_CARTWHEEL = "hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi"
UCF101_CLIPS = (
    "v_ApplyEyeMakeup_g01_c01.avi",
    "v_SoccerJuggling_g23_c01.avi",
    "v_SoccerJuggling_g24_c01.avi",
)
KINETICS_CLIPS = ("SOX5yA1l24A.mp4", "R6llTwEh07w.mp4", "WUzgd7C1pWA.mp4")


def shared_clip(name: str) -> str:
    """The path of a real clip of ../shared/data/video; skips the test when it or ffmpeg is absent."""
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.skip("ffmpeg/ffprobe not installed")
    path = os.path.join(SHARED_VIDEO_DIR, name)
    if not os.path.exists(path):
        pytest.skip(f"real video clips not available ({path})")
    return path


def hmdb51_manual_dir(root) -> str:
    """The official layout with the shared wave/cartwheel clips and tiny split1 files."""
    manual = os.path.join(root, "hmdb51_manual")
    marks = {"wave": {HMDB51_WAVE[0]: "1", HMDB51_WAVE[1]: "1", HMDB51_WAVE[2]: "2"}}
    # The official name of the cartwheel clip has no "hmdb51_" prefix.
    cartwheel_name = HMDB51_CARTWHEEL.removeprefix("hmdb51_")
    marks["cartwheel"] = {cartwheel_name: "1", "unused_clip.avi": "0"}
    sources = {HMDB51_CARTWHEEL: cartwheel_name, **{w: w for w in HMDB51_WAVE}}
    for class_name, entries in marks.items():
        os.makedirs(os.path.join(manual, hmdb51.VIDEOS_DIR, class_name), exist_ok=True)
        for source, name in sources.items():
            if name in entries:
                shutil.copy(
                    shared_clip(source), os.path.join(manual, hmdb51.VIDEOS_DIR, class_name, name)
                )
        os.makedirs(os.path.join(manual, hmdb51.SPLITS_DIR), exist_ok=True)
        with open(hmdb51.split_file(manual, class_name, 1), "w") as f:
            f.writelines(f"{name} {mark} \n" for name, mark in entries.items())
    return manual


def kinetics_manual_dir(root) -> str:
    """<split>/<class>/<clip>.mp4 + annotations/<split>.csv with the shared Kinetics clips."""
    manual = os.path.join(root, "kinetics_manual")
    rows = {  # split -> [(label, youtube id, file name)]
        "train": [
            ("playing guitar", "SOX5yA1l24A", "SOX5yA1l24A_000010_000020.mp4"),
            ("juggling balls", "R6llTwEh07w", "R6llTwEh07w.mp4"),
            ("juggling balls", "gone_video1", None),  # in the CSV, never downloaded
            ("archery", "WUzgd7C1pWA", "WUzgd7C1pWA.mp4"),  # a class outside the subset
        ],
        "validate": [("juggling balls", "WUzgd7C1pWA", "WUzgd7C1pWA.mp4")],
    }
    os.makedirs(os.path.join(manual, kinetics.ANNOTATIONS_DIR))
    for split, entries in rows.items():
        with open(os.path.join(manual, kinetics.ANNOTATIONS_DIR, f"{split}.csv"), "w") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for label, youtube_id, file_name in entries:
                writer.writerow([label, youtube_id, 10, 20, split])
                if file_name:
                    folder = os.path.join(manual, split, label.replace(" ", "_"))
                    os.makedirs(folder, exist_ok=True)
                    shutil.copy(shared_clip(f"{youtube_id}.mp4"), os.path.join(folder, file_name))
    return manual
