"""Loaders: our sessions, generic BIDS runs, CC2017; errors name the file and the field."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from nibabel import cifti2

from rtdecode.data import DataError, load_bids_run, load_cc2017, load_session
from rtdecode.messages import Volume


def write_run(path, data, tr=2.0, sidecar=True, events=None):
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    stem = path.name.replace("_bold.nii", "")
    if sidecar is True:
        sidecar = {"RepetitionTime": tr, "TaskName": "movie"}
    if sidecar:
        (path.parent / f"{stem}_bold.json").write_text(json.dumps(sidecar))
    if events is not None:
        (path.parent / f"{stem}_events.tsv").write_text(events)
    return path


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_nifti_round_trip_exact(tmp_path, dtype):
    rng = np.random.default_rng(0)
    data = (rng.normal(1000, 30, (5, 6, 4, 12))).astype(dtype)
    path = write_run(tmp_path / "sub-01_task-movie_run-02_bold.nii", data)
    mask = np.zeros((5, 6, 4), bool)
    mask[1:4, 2:5, 1:3] = True
    run = load_bids_run(path, mask=mask)
    assert (run.task, run.run, run.tr, run.n_trs) == ("movie", 2, 2.0, 12)
    got = run.data()
    assert got.dtype == np.float32 and got.shape == (12, mask.sum())
    np.testing.assert_array_equal(got, data[mask].T.astype(np.float32))
    unmasked = load_bids_run(path).data()
    np.testing.assert_array_equal(unmasked, data.reshape(-1, 12).T.astype(np.float32))


def test_generic_run_events_and_volumes(tmp_path):
    data = np.ones((3, 3, 3, 10), np.float32)
    path = write_run(tmp_path / "sub-01_task-movie_run-01_bold.nii", data,
                     events="onset\tduration\ttrial_type\n0\t2\tclip\n4.0\t2\tclip\n")
    run = load_bids_run(path)
    np.testing.assert_array_equal(run.stim_trs, [0, 2])
    np.testing.assert_array_equal(run.clip_ids, [0, 1])
    vols = list(run.volumes())
    assert len(vols) == 10 and isinstance(vols[0], Volume)
    assert vols[3].tr_index == 3 and vols[3].t_acq == 6.0 and vols[3].shape == (27,)


def test_missing_repetition_time_names_file_and_field(tmp_path):
    path = write_run(tmp_path / "sub-01_task-a_bold.nii", np.zeros((2, 2, 2, 3), np.float32),
                     sidecar={"TaskName": "a"})
    with pytest.raises(DataError) as exc:
        load_bids_run(path)
    assert "sub-01_task-a_bold.json" in str(exc.value)
    assert "RepetitionTime" in str(exc.value)


def test_missing_sidecar_and_bad_tr(tmp_path):
    path = write_run(tmp_path / "sub-01_task-a_bold.nii", np.zeros((2, 2, 2, 3), np.float32),
                     sidecar=None)
    with pytest.raises(DataError, match="sidecar JSON not found"):
        load_bids_run(path)
    write_run(path, np.zeros((2, 2, 2, 3), np.float32), sidecar={"RepetitionTime": -2})
    with pytest.raises(DataError, match="'RepetitionTime' = -2"):
        load_bids_run(path)


def test_3d_where_4d_expected(tmp_path):
    path = write_run(tmp_path / "sub-01_task-a_bold.nii", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(DataError) as exc:
        load_bids_run(path)
    assert "sub-01_task-a_bold.nii" in str(exc.value) and "4-D" in str(exc.value)


def test_mask_volume_shape_mismatch(tmp_path):
    path = write_run(tmp_path / "sub-01_task-a_bold.nii", np.zeros((4, 4, 4, 3), np.float32))
    with pytest.raises(DataError) as exc:
        load_bids_run(path, mask=np.ones((4, 4, 5), bool))
    assert "sub-01_task-a_bold.nii" in str(exc.value)
    assert "(4, 4, 4)" in str(exc.value) and "(4, 4, 5)" in str(exc.value)


def test_session_mask_mismatch_names_run(small_session, tmp_path):
    import shutil
    root = tmp_path / "s"
    shutil.copytree(small_session / "sub-03", root / "sub-03")
    bad = root / "sub-03/func/sub-03_task-train_run-01_bold.nii"
    img = nib.load(str(bad), mmap=False)  # never rewrite a file that is memory-mapped
    data = np.asarray(img.dataobj)[:-1].copy()
    nib.save(nib.Nifti1Image(data, img.affine), bad)
    with pytest.raises(DataError, match="sub-03_task-train_run-01_bold.nii"):
        load_session(root, "sub-03")


def test_load_session_and_errors(small_session, tmp_path):
    sess = load_session(small_session, "sub-02")
    assert sess.tr == 2.0 and sess.n_voxels == 1200
    assert [r.task for r in sess.runs][:4] == ["train"] * 4
    assert len(sess.clips) == 300
    with pytest.raises(DataError, match="sub-09"):
        load_session(small_session, "sub-09")
    with pytest.raises(DataError, match="not found"):
        load_session(tmp_path / "absent")


def _write_dtseries(path, n_vols, n_cortex=59412, tr=2.0, seed=0):
    """A CC2017-layout CIFTI dtseries: cortex vertices first, then a few subcortical voxels."""
    rng = np.random.default_rng(seed)
    left = n_cortex // 2
    bm = (cifti2.BrainModelAxis.from_mask(np.ones(left, bool), name="CortexLeft")
          + cifti2.BrainModelAxis.from_mask(np.ones(n_cortex - left, bool), name="CortexRight")
          + cifti2.BrainModelAxis.from_mask(np.ones((2, 2, 2), bool), name="thalamus_left",
                                           affine=np.eye(4)))
    series = cifti2.SeriesAxis(start=0, step=tr, size=n_vols)
    data = rng.normal(0, 1, (n_vols, len(bm))).astype(np.float32)
    data[:, :n_cortex] += np.arange(n_vols)[:, None]  # volume index, to check the trimming
    img = cifti2.Cifti2Image(data, header=(series, bm))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(str(path))


def test_cc2017_loader_on_published_layout(tmp_path):
    root = tmp_path / "video_fmri_dataset"
    fmri = root / "subject1" / "fmri"
    _write_dtseries(fmri / "seg1/cifti/seg1_1_Atlas.dtseries.nii", 245)
    _write_dtseries(fmri / "seg1/cifti/seg1_2_Atlas.dtseries.nii", 245, seed=1)
    _write_dtseries(fmri / "test2/cifti/test2_1_Atlas.dtseries.nii", 246, seed=2)
    sess = load_cc2017(root, 1)
    assert [(r.task, r.segment, r.repeat) for r in sess.runs] == \
        [("train", 1, 1), ("train", 1, 2), ("test", 2, 1)]
    train = sess.runs[0].data()
    assert train.shape == (240, 59412)
    # 245 volumes: the first 1 and the last 4 dropped.
    assert np.allclose(train[:, :100].mean(1), np.arange(1, 241), atol=0.5)
    test = sess.runs[2].data()
    assert np.allclose(test[:, :100].mean(1), np.arange(2, 242), atol=0.5)
    assert sess.runs[2].clip_ids[0] == (1 + 2 - 1) * 240  # after the training segments


def test_cc2017_errors(tmp_path):
    root = tmp_path / "cc"
    with pytest.raises(DataError, match="subject1"):
        load_cc2017(root, 1)
    _write_dtseries(root / "subject1/fmri/seg1/cifti/seg1_1_Atlas.dtseries.nii", 100)
    with pytest.raises(DataError, match="100 volumes"):
        load_cc2017(root, 1)
    _write_dtseries(root / "subject1/fmri/seg1/cifti/seg1_1_Atlas.dtseries.nii", 245, tr=1.0)
    with pytest.raises(DataError, match="series step 1.0"):
        load_cc2017(root, 1)
