
import pytest
import torch

from fgexp import tangents
from fgexp.paper import CONE_ANGLES


def test_shapes_and_batched_leading_dims():
    for name in ("normal", "rademacher", "basis"):
        v = tangents.sample(name, (3, 2), 4, 7, torch.Generator().manual_seed(0))
        assert v.shape == (3, 2, 4, 7)
    assert tangents.sample("cone", (5,), 4, 7, angle_deg=30).shape == (5, 4, 7)


def test_seeded_and_per_seed_streams_independent_of_batch():
    gens = tangents.generators([3, 4])
    both = tangents.sample("normal", (2,), 4, 9, gens)
    alone = tangents.sample("normal", (), 4, 9, tangents.generators([4])[0])
    assert torch.equal(both[1], alone)
    assert not torch.equal(both[0], both[1])


def test_rademacher_values_and_basis_rows():
    r = tangents.sample("rademacher", (), 50, 20, torch.Generator().manual_seed(1))
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    b = tangents.sample("basis", (2,), 3, 5)
    assert torch.equal(b[1], torch.eye(3, 5))


def test_normalize_gives_unit_rows():
    v = tangents.sample("normal", (4,), 3, 11, normalize=True)
    assert torch.allclose(v.norm(dim=-1), torch.ones(4, 3), atol=1e-6)


@pytest.mark.parametrize("angle", [*CONE_ANGLES, 7.5])
def test_cone_angles_exact(angle):
    v = tangents.sample("cone", (20,), 16, 64, torch.Generator().manual_seed(2),
                        angle_deg=angle, dtype=torch.float64)
    assert torch.allclose(v.norm(dim=-1), torch.ones(20, 16, dtype=torch.float64), atol=1e-12)
    cos = (v[:, 1:] * v[:, :1]).sum(-1).clamp(-1, 1)
    angles = torch.rad2deg(torch.acos(cos))
    assert (angles - angle).abs().max() < 1e-4


def test_cone_float32_angles_within_1e_4_degrees():
    v = tangents.sample("cone", (10,), 8, 64, angle_deg=45.0)
    v = v.double()
    cos = (v[:, 1:] * v[:, :1]).sum(-1) / (v[:, 1:].norm(dim=-1) * v[:, :1].norm(dim=-1))
    # float32 storage limits the precision; the request holds to about 1e-3 degrees there.
    assert (torch.rad2deg(torch.acos(cos)) - 45.0).abs().max() < 1e-3


def test_cone_further_tangents_spread_around_first():
    v = tangents.sample("cone", (), 64, 64, torch.Generator().manual_seed(3), angle_deg=90.0)
    gram = v @ v.T
    # At 90 degrees all others are orthogonal to the first but not to each other (random).
    assert gram[0, 1:].abs().max() < 1e-5
    assert gram[1:, 1:].fill_diagonal_(0).abs().max() > 0.1


@pytest.mark.parametrize("kwargs, match", [
    (dict(sampler="gaussian", lead=(), k=2, n=3), "allowed: normal, rademacher, basis, cone"),
    (dict(sampler="normal", lead=(), k=0, n=3), "k must be"),
    (dict(sampler="normal", lead=(), k=2, n=0), "n must be"),
    (dict(sampler="cone", lead=(), k=2, n=3, angle_deg=0.0), r"\(0, 90\]"),
    (dict(sampler="cone", lead=(), k=2, n=3, angle_deg=91.0), r"\(0, 90\]"),
    (dict(sampler="basis", lead=(), k=4, n=3), "k <= n"),
    (dict(sampler="normal", lead=(), k=2, n=3, angle_deg=30.0), "only to the cone"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tangents.sample(**kwargs)


def test_generator_count_must_match_batch():
    with pytest.raises(ValueError, match="one generator per entry"):
        tangents.sample("normal", (3,), 2, 4, tangents.generators([0, 1]))


def test_drawing_into_a_buffer_keeps_each_seeds_stream():
    # n not a multiple of torch's 16-number blocks, k > 1: the whole stream must match.
    fresh = tangents.sample("normal", (), 4, 1003, torch.Generator().manual_seed(5))
    buffer = torch.full((4, 1003), float("nan"))
    drawn = tangents.normal((), 4, 1003, torch.Generator().manual_seed(5), out=buffer)
    assert drawn.data_ptr() == buffer.data_ptr()
    assert torch.equal(drawn, fresh)
    with pytest.raises(ValueError, match="shape"):
        tangents.normal((), 4, 1000, torch.Generator(), out=buffer)


def test_normal_buffer_draws_each_seeds_stream_into_reused_memory():
    gens = lambda: tangents.generators([3, 4])  # noqa: E731
    fresh = tangents.sample("normal", (2,), 4, 1003, gens())
    draws = tangents.NormalBuffer()
    first = draws.draw(4, 1003, gens())
    assert torch.equal(first, fresh)
    again = draws.draw(4, 1003, gens())
    assert again.data_ptr() == first.data_ptr() and torch.equal(again, fresh)
    fewer = draws.draw(4, 1003, tangents.generators([4]))  # a run stopped: a view, same memory
    assert fewer.data_ptr() == first.data_ptr() and torch.equal(fewer[0], fresh[1])
    one = draws.draw(4, 1003, torch.Generator().manual_seed(4))  # one run: its own buffer
    assert tuple(one.shape) == (4, 1003) and torch.equal(one, fresh[1])
    draws.release()
    assert torch.equal(draws.draw(4, 1003, gens()), fresh)  # allocated again, same numbers
