"""Pulls whose client writes into its basis (sender.c updating_basis_file), at -vv with
``max verbosity = 2`` so the sender's match report (match.c match_report) is compared too:
--inplace over a basis whose blocks the new file holds below and above their offsets, zeros
that hash_search() re-aligns to a block boundary, a partial-dir file the client writes in
place (compat flag 'I', inplace_partial: no --inplace needed, and rsync refuses --inplace
with --partial-dir), and --inplace --backup below protocol 29 (then not in place: the
receiver reads the backup). -vv with --stats adds the client's heap statistics (with
pids), so the -vv scenarios compare the report's ``data=`` instead; two --stats ones
compare the literal data. A rotated 1 MiB file: a backward match there makes the client
read back bytes it already wrote (its map window is 256 KiB), fail the whole-file check
and redo the file.

Imported by scenarios.py, which holds the list.
"""

from __future__ import annotations

from tests.delta_data import BACKFWD_BASIS, BACKFWD_NEW, ROT_BASIS, ROT_NEW, ZERO_BASIS, ZERO_NEW
from tests.differential.harness import T0
from tests.differential.scenarios import BIG, BIG2, VV, pull, scenario, write
from tests.helpers import File

NO_INC = "--no-inc-recursive"

scenario("pull-vv-inplace-shifted", write("client/dst/big.bin", BIG[:90000], mtime=T0),
         pull("-avv", NO_INC, "--inplace"),
         seed={"big.bin": File(BIG2, mtime=T0 + 900)}, params=VV)
scenario("pull-vv-inplace-backward-forward", write("client/dst/bf.bin", BACKFWD_BASIS, mtime=T0),
         pull("-avv", NO_INC, "--inplace"),
         seed={"bf.bin": File(BACKFWD_NEW, mtime=T0 + 900)}, params=VV)
scenario("pull-vv-inplace-zeros-realigned", write("client/dst/z.bin", ZERO_BASIS, mtime=T0),
         pull("-avv", NO_INC, "--inplace", "--block-size=500"),
         seed={"z.bin": File(ZERO_NEW, mtime=T0 + 900)}, params=VV)
scenario("pull-vv-partial-dir-in-place", write("client/dst/.part/bf.bin", BACKFWD_BASIS, mtime=T0),
         pull("-avv", NO_INC, "--partial-dir=.part"),
         seed={"bf.bin": File(BACKFWD_NEW, mtime=T0 + 900)}, params=VV)
scenario("pull-vv-inplace-backup-protocol-28", write("client/dst/bf.bin", BACKFWD_BASIS, mtime=T0),
         pull("-avv", "--protocol=28", "--inplace", "--backup"),
         seed={"bf.bin": File(BACKFWD_NEW, mtime=T0 + 900)}, params=VV)
scenario("pull-inplace-backward-forward", write("client/dst/bf.bin", BACKFWD_BASIS, mtime=T0),
         pull("-ai", "--inplace", "--stats", delta=True), seed={"bf.bin": File(BACKFWD_NEW, mtime=T0 + 900)})
scenario("pull-partial-dir-in-place-stats", write("client/dst/.part/bf.bin", BACKFWD_BASIS, mtime=T0),
         pull("-ai", "--partial-dir=.part", "--stats", delta=True), seed={"bf.bin": File(BACKFWD_NEW, mtime=T0 + 900)})
scenario("pull-inplace-rotated-big", write("client/dst/rot.bin", ROT_BASIS, mtime=T0),
         pull("-ai", "--inplace", "--stats", delta=True), seed={"rot.bin": File(ROT_NEW, mtime=T0 + 900)})
scenario("pull-vv-inplace-rotated-big", write("client/dst/rot.bin", ROT_BASIS, mtime=T0),
         pull("-avv", NO_INC, "--inplace"), seed={"rot.bin": File(ROT_NEW, mtime=T0 + 900)}, params=VV)
