"""The library's compress request (d3codec.encode.request), driven without the command line: what the
`d3 compress` command maps its flags to."""

import pytest

from d3codec.encode.request import CompressRequest, D3RequestError, LabellerRequest, check_request, prepare, run_request
from d3codec.format.container import D3Reader


def test_refusals_name_the_field_to_change_before_any_work(tmp_path):
    out = tmp_path / "x.d3"
    with pytest.raises(D3RequestError) as both:
        check_request(CompressRequest("dm", "fashion-mnist", out, ipc=1, budget=1000))
    assert both.value.field == "ipc/budget"
    with pytest.raises(D3RequestError) as neither:
        check_request(CompressRequest("dm", "fashion-mnist", out))
    assert neither.value.field == "ipc/budget"
    with pytest.raises(D3RequestError) as picture:
        check_request(CompressRequest("dm", "fashion-mnist", tmp_path / "grid.png", ipc=1))
    assert picture.value.field == "output" and "grid.d3" in str(picture.value)
    out.write_bytes(b"a user's file")
    with pytest.raises(D3RequestError) as exists:
        check_request(CompressRequest("dm", "fashion-mnist", out, ipc=1))
    assert exists.value.field == "force" and out.read_bytes() == b"a user's file"
    check_request(CompressRequest("dm", "fashion-mnist", out, ipc=1, force=True))  # overwriting was asked for


def test_a_request_runs_end_to_end_and_its_checkpoint_policy_holds(image_folder, tmp_path):
    request = CompressRequest(
        "dm",
        str(image_folder),
        tmp_path / "x.d3",
        budget=8_000,
        resolution=16,
        options={"iterations": 2, "real_per_class": 4},
        device="cpu",
        progress=False,
    )
    with pytest.raises(D3RequestError) as nothing:  # insisting on a checkpoint there is none of
        prepare(CompressRequest(**{**request.__dict__, "resume": "resume"}))
    assert nothing.value.field == "resume"
    said = []
    result = run_request(request, announce=said.append)
    assert said[0].real.num_classes == 3 and said[0].resumed_from == [] and said[0].chosen is None
    assert result.file_bytes <= 8_000 == result.budget
    with D3Reader(result.path) as reader:
        assert reader.file_size == result.file_bytes


def test_a_labeller_is_refused_where_the_run_is_federated(tmp_path):
    request = CompressRequest(
        "d3", "fashion-mnist", tmp_path / "x.d3", ipc=1, workers=2, labeller=LabellerRequest(width=8)
    )
    with pytest.raises(D3RequestError) as refused:
        prepare(request)
    assert refused.value.field == "labeller"
