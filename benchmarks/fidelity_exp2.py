# Experiment 2: stage-1 radius term alpha and spread correction beta on Sigma-clusters, SmolLM2, int8.
import sys, torch
sys.path.insert(0, "benchmarks")
from fidelity_lab import load, evaluate
from flashhead.clustering import balanced_kmeans
from flashhead.calibrate import second_moment, query_transform, weighted_spread
torch.set_num_threads(2)
D = load("smollm2-135m"); W = D["head"]
He, Ye, Hc, Yc = D["eval_h"][:2048], D["eval_y"][:2048], D["cal_h"], D["cal_y"]
sigma = second_moment(Hc)
cl = balanced_kmeans(W, 16, 8, progress=False, metric="euclidean", transform=query_transform(sigma))
rho = weighted_spread(W, cl.assignments, sigma)
for beta in [0, 0.5, 1, 1.5, 2]:
    for alpha in [0, 1]:
        r = evaluate(W, He, Ye, cl.assignments, [256, 288], "int8", alpha=alpha, beta=beta, rho=rho)
        print("beta", beta, "alpha", alpha, {p: {k: round(v, 4) for k, v in x.items()} for p, x in r.items()}, flush=True)
