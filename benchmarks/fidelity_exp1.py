# Experiment 1: cosine vs Sigma^(1/2)-euclidean vs plain euclidean clustering, SmolLM2, int8 stage 1.
# Run from the repo root: python benchmarks/fidelity_exp1.py (needs benchmarks/fidelity_data.py smollm2-135m first).
import sys, time, torch, json
sys.path.insert(0, "benchmarks")
from fidelity_lab import load, evaluate, bytes_fraction
from flashhead.clustering import balanced_kmeans
from flashhead.calibrate import second_moment, query_transform, weighted_spread
torch.set_num_threads(2)
D = load("smollm2-135m")
W, He, Ye, Hc = D["head"], D["eval_h"][:4096], D["eval_y"][:4096], D["cal_h"]
V, d = W.shape
sigma = second_moment(Hc)
P = [64, 128, 192, 256, 288]
res = {}
for name, kw in [("cosine", {}), ("sigma", dict(metric="euclidean", transform=query_transform(sigma))),
                 ("euclid", dict(metric="euclidean"))]:
    t = time.time()
    cl = balanced_kmeans(W, 16, 8, progress=False, **kw)
    bt = time.time() - t
    rho = weighted_spread(W, cl.assignments, sigma)
    r = evaluate(W, He, Ye, cl.assignments, P, "int8", rho=rho)
    res[name] = r
    print(name, f"build {bt:.0f}s", flush=True)
    for p in P:
        print(f"  P={p} bf={bytes_fraction(V,d,V//16,16,p,'int8'):.4f}", {k: round(v, 4) for k, v in r[p].items()}, flush=True)
