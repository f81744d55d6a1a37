# The plain script that measured the 2:4 section on one H200 (2026-12-02 09:17 UTC; results in two_four_probe_graphs.json),
# run from the repository root with PYTHONPATH=. when the lecture run did not fit the lease. two_four_probe_eager.json
# (09:15 UTC) is the same library function before its cuda_graphs option, FP16 and BF16 through cuSPARSELt, and
# FP16 forced onto CUTLASS (refused on compute capability 9.0).
import json, os, time, torch
from optcourse.techniques import compression
res = {}
for dtype in (torch.float16,):
    t0 = time.time()
    rows = compression.compare_semi_structured_mlp(4096, 14336, [16, 64, 2048, 8192], device="cuda", dtype=dtype,
                                                   rounds=5, repeat=5, cuda_graphs=True)
    res[str(dtype)] = rows
    print(f"== {dtype} ({time.time()-t0:.1f} s)")
    for r in rows:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "probe2.json"), "w"), indent=1)
