#!/usr/bin/env python3
"""The module import graph of src/, from its `crate::` paths, and any cycle among top-level
modules (exit status 1 when there is one).

    scripts/module-graph.py [SRC_DIR] [DEPTH]     defaults: src 2 (e.g. sink::cosmos)
"""
import os, re, sys, collections
root = sys.argv[1] if len(sys.argv) > 1 else "src"
depth = int(sys.argv[2]) if len(sys.argv) > 2 else 2
def modpath(f):
    p = os.path.relpath(f, root)[:-3].split(os.sep)
    if p[-1] in ("mod", "lib"): p = p[:-1]
    return p
edges = collections.defaultdict(set)
for d, _, fs in os.walk(root):
    for fn in fs:
        if not fn.endswith(".rs") or d.startswith(os.path.join(root, "bin")): continue
        f = os.path.join(d, fn)
        me = modpath(f)
        if not me: continue
        text = open(f).read()
        # strip line comments
        text = re.sub(r"//[^\n]*", "", text)
        # expand `use crate::{a::b, c}` groups roughly
        targets = []
        for m in re.finditer(r"crate::(\{[^;]*\}|[a-z_][a-z0-9_:]*)", text):
            s = m.group(1)
            if s.startswith("{"):
                for part in re.findall(r"(?:^|[{,]\s*)([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", s):
                    targets.append(part.split("::"))
            else:
                targets.append([x for x in s.split("::") if x])
        a = "::".join(me[:depth])
        for t in targets:
            t = [x for x in t if re.match(r"^[a-z_][a-z0-9_]*$", x)]
            if not t: continue
            b = "::".join(t[:depth]) if t[0] in ("sink","source","config","supervisor","run_state","worker","queue","cli") else t[0]
            if b.split("::")[0] == a.split("::")[0] and depth == 1: continue
            if b == a or b.startswith(a+"::") or a.startswith(b+"::") : continue
            edges[a].add(b)
for a in sorted(edges):
    print(f"{a} -> {', '.join(sorted(edges[a]))}")
# cycles between top-level modules
def top(x): return x.split("::")[0]
g = collections.defaultdict(set)
for a, bs in edges.items():
    for b in bs:
        if top(a) != top(b): g[top(a)].add(top(b))
# Tarjan SCC
idx = {}; low = {}; st = []; on = set(); out = []; c = [0]
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in g.get(v, ()):
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: out.append(sorted(comp))
for v in list(g):
    if v not in idx: sc(v)
print("cycles among top-level modules:", out if out else "none")
sys.exit(1 if out else 0)
