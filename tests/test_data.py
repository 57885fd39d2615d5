"""Video data: the synthetic temporal benchmark, the video-list loader, calibration sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uniformer_edge.calibration import (
    MEAN,
    STD,
    SYNTHETIC_CLASSES,
    SyntheticMotion,
    VideoDataset,
    build_dataset,
    calibration_set,
    read_annotations,
)
from uniformer_edge.calibration.synthetic import _main_track


def test_synthetic_is_deterministic_and_split_specific():
    a = SyntheticMotion("train", frames=6, size=48, num_clips=24)
    b = SyntheticMotion("train", frames=6, size=48, num_clips=24)
    x1, y1 = a[7]
    x2, y2 = b[7]
    assert torch.equal(x1, x2) and y1 == y2
    assert x1.shape == (3, 6, 48, 48) and x1.dtype == torch.float32
    assert not torch.equal(x1, SyntheticMotion("test", frames=6, size=48, num_clips=24)[7][0])
    assert not torch.equal(x1, SyntheticMotion("train", frames=6, size=48, num_clips=24, seed=1)[7][0])
    # Any size and aspect; values normalised from 8-bit pixels.
    x, _ = SyntheticMotion("val", frames=3, height=40, width=72, num_clips=2)[1]
    assert x.shape == (3, 3, 40, 72)
    assert x.min() >= (0 - MEAN) / STD - 1e-6 and x.max() <= (1 - MEAN) / STD + 1e-6


def test_synthetic_classes_and_balance():
    ds = SyntheticMotion("test", frames=4, size=32)
    assert len(SYNTHETIC_CLASSES) >= 12 and len(ds) == 1200
    assert np.bincount(ds.labels).tolist() == [100] * 12


@pytest.mark.parametrize("pair", range(6))
def test_class_pairs_differ_only_in_time_order(pair):
    """From the same random draws, the second class of a pair is the first played backwards."""
    for seed in range(5):
        fwd = _main_track(np.random.default_rng(seed), 2 * pair, 8)
        bwd = _main_track(np.random.default_rng(seed), 2 * pair + 1, 8)
        for name in ("x", "y", "a", "b", "angle", "alpha"):
            np.testing.assert_allclose(getattr(bwd, name), getattr(fwd, name)[::-1], atol=1e-12, err_msg=name)
        assert fwd.shape == bwd.shape and np.array_equal(fwd.color, bwd.color)
        # ... and the motion is real: some quantity changes over the clip.
        assert max(np.ptp(getattr(fwd, n)) for n in ("x", "y", "a", "angle", "alpha")) > 0.05


def test_reversed_and_single_frame_views():
    base = SyntheticMotion("test", frames=6, size=32, num_clips=12)
    rev = SyntheticMotion("test", frames=6, size=32, num_clips=12, reverse=True)
    single = SyntheticMotion("test", frames=6, size=32, num_clips=12, single_frame=True)
    x, y = base[3]
    xr, yr = rev[3]
    xs, ys = single[3]
    assert y == yr == ys
    assert torch.equal(xr, x.flip(1))
    assert all(torch.equal(xs[:, t], x[:, 3]) for t in range(6))


# ----------------------------------------------------------------------------- video files


def _write_video(path, num_frames, size=(48, 64), codec="mpeg4"):
    """A video whose frame i is uniformly grey at level 8*i, so sampling can be checked."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            img = np.full((size[0], size[1], 3), 8 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture
def video_tree(tmp_path):
    root = tmp_path / "videos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    _write_video(root / "a" / "v0.mp4", 24)
    _write_video(root / "a" / "v1.mp4", 20)
    _write_video(root / "b" / "v2.mp4", 30)
    _write_video(root / "b" / "short.mp4", 3)
    (root / "b" / "corrupt.mp4").write_bytes(b"\x00\x01 this is not a video" * 50)
    lines = ["a/v0.mp4 0", "a/v1.mp4,0", "b/v2.mp4 1", "b/corrupt.mp4 1", "b/missing.mp4 1", "b/short.mp4 1"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_video_list_loader(video_tree):
    with pytest.warns(UserWarning) as caught:
        ds = VideoDataset(video_tree / "videos", video_tree / "list.txt", frames=4, size=32)
    messages = [str(w.message) for w in caught]
    assert any("corrupt.mp4: unreadable" in m for m in messages)
    assert any("missing.mp4: file not found" in m for m in messages)
    assert any("short.mp4: too short (3 frames, 4 needed)" in m for m in messages)
    assert any("skipped 3 of 6 videos" in m for m in messages)
    assert len(ds) == 3 and ds.labels == [0, 0, 1]
    clip, label = ds[0]
    assert clip.shape == (3, 4, 32, 32) and label == 0
    # Uniform sampling of 24 frames into 4 segments takes frames 3, 9, 15, 21 (grey 8*i).
    levels = (clip * 0.225 + 0.45).mean(dim=(0, 2, 3)) * 255
    np.testing.assert_allclose(levels.numpy(), [24, 72, 120, 168], atol=4)


def test_strided_sampling_and_short_side_resize(video_tree):
    (video_tree / "one.txt").write_text("b/v2.mp4 1\n")
    ds = VideoDataset(
        video_tree / "videos",
        video_tree / "one.txt",
        frames=4,
        size=40,
        sampling="strided",
        sampling_rate=8,
        num_classes=2,
    )
    clip, _ = ds[0]
    assert clip.shape == (3, 4, 40, 40)  # 48x64 -> short side 40 -> centre crop 40x40
    levels = (clip * 0.225 + 0.45).mean(dim=(0, 2, 3)) * 255
    np.testing.assert_allclose(levels.numpy(), [8 * i for i in (2, 10, 18, 26)], atol=4)  # centred 25-frame span
    with pytest.warns(UserWarning, match="too short"):
        with pytest.raises(ValueError, match="no usable videos"):
            VideoDataset(
                video_tree / "videos",
                video_tree / "one.txt",
                frames=8,
                sampling="strided",
                sampling_rate=8,
                num_classes=2,
            )


def test_folder_per_class_and_class_names(video_tree):
    root = video_tree / "videos"
    (root / "b" / "corrupt.mp4").unlink()
    (root / "b" / "short.mp4").unlink()
    ds = build_dataset("folder", root=str(root), frames=4, size=32)
    assert ds.classes == ["a", "b"] and ds.labels == [0, 0, 1]
    names = video_tree / "names.txt"
    names.write_text("walking\nrunning\njumping\n")
    with pytest.warns(UserWarning, match="skipped 3 of 6"):  # files deleted above are reported missing
        ds = VideoDataset(root, video_tree / "list.txt", frames=2, size=32, class_names=names, probe=False)
    assert ds.num_classes == 3 and ds.classes[1] == "running"


def test_pre_extracted_clips(tmp_path):
    (tmp_path / "c0").mkdir()
    (tmp_path / "c1").mkdir()
    frames = np.stack([np.full((20, 30, 3), 10 * i, np.uint8) for i in range(12)])
    np.save(tmp_path / "c0" / "x.npy", frames)
    torch.save(torch.from_numpy(frames.astype(np.float32) / 255), tmp_path / "c1" / "y.pt")
    ds = build_dataset("folder", root=str(tmp_path), frames=4, size=16)
    (a, la), (b, lb) = ds[0], ds[1]
    assert (la, lb) == (0, 1) and a.shape == b.shape == (3, 4, 16, 16)
    assert torch.allclose(a, b, atol=1e-5)  # uint8 and [0, 1] float frames give the same clip


def test_loader_errors(tmp_path, video_tree):
    with pytest.raises(FileNotFoundError, match="video root folder not found"):
        VideoDataset(tmp_path / "nowhere", video_tree / "list.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="has no entries"):
        VideoDataset(video_tree / "videos", empty)
    bad = tmp_path / "bad.txt"
    bad.write_text("a/v0.mp4 0\na/v1.mp4 7\n")
    with pytest.raises(ValueError, match=r"label\(s\) outside 0..2, e.g. a/v1.mp4 -> 7"):
        VideoDataset(video_tree / "videos", bad, num_classes=3)
    bad.write_text("a/v0.mp4 zero\n")
    with pytest.raises(ValueError, match="bad.txt:1: label 'zero' is not an integer"):
        read_annotations(bad)
    with pytest.raises(FileNotFoundError, match="annotation list not found"):
        build_dataset(str(tmp_path / "nolist.txt"))


# ----------------------------------------------------------------------------- calibration


def test_calibration_set_is_stratified_and_deterministic():
    ds = SyntheticMotion("val", frames=2, size=16, num_clips=120)
    cs = calibration_set(ds, 30, seed=3, batch_size=7)
    again = calibration_set(ds, 30, seed=3, batch_size=7)
    assert cs.indices == again.indices and cs.indices != calibration_set(ds, 30, seed=4).indices
    counts = np.bincount(cs.labels(), minlength=12)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 30
    batches = list(cs)
    assert len(batches) == len(cs) == 5 and [len(b[1]) for b in batches] == [7, 7, 7, 7, 2]
    assert calibration_set(ds, 1000, seed=0).num_clips == 120


class _Poisoned(torch.utils.data.Dataset):
    labels = [0, 1, 0, 1]

    def __len__(self):
        return 4

    def __getitem__(self, i):
        x = torch.zeros(3, 2, 8, 8)
        if i == 2:
            x[0, 0, 0, 0] = float("nan")
        return x, self.labels[i]

    def item_name(self, i):
        return f"clip-{i}.mp4"


def test_calibration_errors():
    with pytest.raises(ValueError, match="clip-2.mp4 contains NaN or Inf"):
        list(calibration_set(_Poisoned(), 4, batch_size=2))
    with pytest.raises(ValueError, match="at least 1 clip"):
        calibration_set(_Poisoned(), 0)
    with pytest.raises(ValueError, match="empty dataset"):
        calibration_set(SyntheticMotion("val", frames=2, size=16, num_clips=0), 4)
