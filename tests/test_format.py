"""The format's reference math (atom_ao/format.py) on hand-checked cases."""

import expecttest
import torch

from atom_ao.format import (
    k_normal_padded,
    pack_int4,
    quantize_activation_ref,
    quantize_int4_groups,
    quantize_int8_rows,
    unpack_int4,
)


class TestFormat(expecttest.TestCase):
    def test_pack_layout_pairs_j_with_j_plus_half_group(self):
        # group of 32: element j in the low nibble, element j+16 in the high nibble of byte j.
        # first half: -8..7 (nibbles 0x8..0xF, 0x0..0x7); second half: all 1 (high nibble 0x1)
        q = torch.cat([torch.arange(-8, 8), torch.ones(16, dtype=torch.int64)]).to(torch.int8)[None]
        packed = pack_int4(q, 32)
        self.assertEqual(packed.shape, (1, 16))
        # byte j = (q[j] & 0xF) | 0x10: 0x18 = 24 ... 0x1F = 31, then 0x10 = 16 ... 0x17 = 23
        self.assertExpectedInline(
            str(packed.tolist()),
            """[[24, 25, 26, 27, 28, 29, 30, 31, 16, 17, 18, 19, 20, 21, 22, 23]]""",
        )

    def test_pack_round_trip(self):
        q = torch.randint(-8, 8, (5, 384), dtype=torch.int8)
        self.assertTrue(torch.equal(unpack_int4(pack_int4(q, 128), 128), q))

    def test_int4_groups_hand_checked(self):
        x = torch.tensor([[0.7, -1.4, 0.35, 0.0] + [0.0] * 28, [0.0] * 32])
        q, scale = quantize_int4_groups(x, 32, clip_ratio=1.0)
        # scale = 1.4 / 7 = 0.2 -> 0.7/0.2 = 3.5 -> round half to even = 4, -7, 1.75 -> 2
        self.assertExpectedInline(str(q[0, :4].tolist()), """[4, -7, 2, 0]""")
        self.assertAlmostEqual(float(scale[0, 0]), 0.2, places=6)
        # an all-zero group: scale 0 and q 0, never NaN
        self.assertEqual(float(scale[1, 0]), 0.0)
        self.assertTrue(torch.equal(q[1], torch.zeros(32, dtype=torch.int8)))

    def test_int4_clip_saturates(self):
        x = torch.tensor([[7.0, -7.0, 3.0] + [0.0] * 29])
        q, scale = quantize_int4_groups(x, 32, clip_ratio=0.5)
        self.assertExpectedInline(str(q[0, :3].tolist()), """[7, -8, 6]""")
        self.assertAlmostEqual(float(scale[0, 0]), 0.5, places=6)

    def test_int8_rows_hand_checked(self):
        q, scale = quantize_int8_rows(torch.tensor([[127.0, -63.5, 1.0], [0.0, 0.0, 0.0]]))
        self.assertExpectedInline(str(q.tolist()), """[[127, -64, 1], [0, 0, 0]]""")
        self.assertExpectedInline(str(scale.tolist()), """[1.0, 0.0]""")

    def test_nan_goes_to_the_scale(self):
        x = torch.randn(2, 64)
        x[0, 3] = float("nan")
        q, scale = quantize_int4_groups(x, 32)
        self.assertTrue(scale[0, 0].isnan())
        self.assertFalse(scale[0, 1].isnan() or scale[1].isnan().any())

    def test_activation_layout_and_padding(self):
        # K = 80, 16 outliers -> 64 normal channels = 2 groups of 32
        self.assertEqual(k_normal_padded(80, 16, 32), 64)
        self.assertEqual(k_normal_padded(576, 128, 128), 512)
        x = torch.randn(3, 72)
        perm = torch.randperm(72).to(torch.int32)
        packed, scale, qo, so = quantize_activation_ref(x, perm, 16, 32, 1.0)
        self.assertEqual((packed.shape, scale.shape, qo.shape, so.shape),
                         ((3, 32), (3, 2), (3, 16), (3,)))
        # the padded tail of the last group is zero
        self.assertTrue(torch.equal(unpack_int4(packed, 32)[:, 56:], torch.zeros(3, 8, dtype=torch.int8)))
        # outliers are the last 16 channels of the permutation, per-token INT8
        ref_q, _ = quantize_int8_rows(x[:, perm[56:].long()])
        self.assertTrue(torch.equal(qo, ref_q))
