"""Shared helpers of the video tests: where the real clips are, and skips when they are not."""

from __future__ import annotations

import os
import shutil

import pytest

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
