"""Experiment: does an exit head that attends help at layer 16? (It did not; see the README.)

    python benchmarks/experiments/head_attention.py [EXIT_LAYER=16] [TRAIN_CHUNKS=200] [STEPS=400] [KV=own|next]

Caches SmolLM2's residual stream after EXIT_LAYER layers, the K/V of one layer's
attention cache and the teacher's reduced-vocabulary distribution for 200 chunks of
256 standard-library tokens, then trains on the same data, with the loss train-exits uses:
- ``linear``: the train-exits head (own norm gain, residual linear map);
- ``attn3`` / ``attn9``: the same after an attention read with trained query and output
  maps (3 or 9 query heads) over the K/V already in the paged cache: of the layer the token
  just ran (``KV=own``), or of the next layer, which propagation fills for exited tokens
  (``KV=next``, query and output initialised from that layer's). Such a head needs no
  cache of its own.
Held-out agreement with the final top-1 on 16 x 256 tokens of held-out docstrings.
"""
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from vllm_depth.tools.analysis import load_hf
from vllm_depth.tools.data import stdlib_texts, token_chunks
from vllm_depth.tools.train_exit_heads import OutputSpace, distill_loss, frequent_tokens

torch.manual_seed(0); torch.set_num_threads(2)
L = int(sys.argv[1]) if len(sys.argv) > 1 else 16
NTRAIN = int(sys.argv[2]) if len(sys.argv) > 2 else 200
STEPS = int(sys.argv[3]) if len(sys.argv) > 3 else 400
KV = (sys.argv[4] if len(sys.argv) > 4 else "own")
KVL = L - 1 if KV == "own" else L
from vllm_depth.tools.checkpoints import resolve_model

model, tok = load_hf(resolve_model("smollm2-135m"))
cfg = model.config
texts = stdlib_texts("calib")
t0 = time.time()
train = token_chunks(tok, texts, 256, NTRAIN)
held = token_chunks(tok, stdlib_texts("eval"), 256, 16)
space = OutputSpace(model, frequent_tokens(tok, texts, 8192))
print("data", time.time() - t0, flush=True)
def feats(chunks):
    out = []
    for c in chunks:
        ids = torch.tensor([list(c)])
        with torch.no_grad():
            o = model(ids, output_hidden_states=True, use_cache=True)
        k, v = o.past_key_values.layers[KVL].keys[0], o.past_key_values.layers[KVL].values[0]
        teacher, top = space.target(o.logits[0])
        out.append((o.hidden_states[L][0], k, v, teacher.to(torch.bfloat16), top, o.logits[0].argmax(-1)))
    return out
t0 = time.time(); H = feats(held); T = feats(train); print("features", time.time() - t0, flush=True)
nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
rot = model.model.rotary_emb
def rope(q, T_):
    pos = torch.arange(T_)[None]
    cos, sin = rot(q, pos)  # [1,T,hd]
    def rh(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return torch.cat((-x2, x1), -1)
    return q * cos[0] + rh(q) * sin[0]
layer = model.model.layers[KVL]
class Head(nn.Module):
    def __init__(self, attn, qheads=nh):
        super().__init__()
        self.eps = cfg.rms_norm_eps
        self.norm = nn.Parameter(model.model.norm.weight.detach().float().clone())
        self.proj = nn.Linear(576, 576, bias=False); nn.init.zeros_(self.proj.weight)
        self.other = nn.Parameter(torch.zeros(1, 576))
        self.attn = attn; self.qh = qheads
        if attn:
            self.anorm = nn.Parameter(layer.input_layernorm.weight.detach().float().clone())
            wq = layer.self_attn.q_proj.weight.detach().float().clone()
            if qheads != nh:  # one query head per kv group: the first of each group
                g = nh // nkv; sel = torch.cat([torch.arange(i * g * hd, i * g * hd + hd) for i in range(nkv)])
                wq = wq[sel]
            self.q = nn.Parameter(wq)
            self.o = nn.Parameter(layer.self_attn.o_proj.weight.detach().float().clone() if KV == "next" and qheads == nh
                                   else torch.zeros(576, qheads * hd))
    def forward(self, x, k, v):
        x = x.float()
        if self.attn:
            a = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.anorm
            Tn = x.shape[0]
            q = (a @ self.q.t()).view(Tn, self.qh, hd).transpose(0, 1)
            q = rope(q, Tn)
            rep = self.qh // nkv
            kk = k.repeat_interleave(rep, 0); vv = v.repeat_interleave(rep, 0)
            att = F.scaled_dot_product_attention(q[None], kk[None].float(), vv[None].float(), is_causal=True)[0]
            x = x + att.transpose(0, 1).reshape(Tn, -1) @ self.o.t()
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm
        return h + self.proj(h)
def logits(head, f):
    h = head(f[0], f[1], f[2])
    return torch.cat([h @ space.weight.t(), h @ head.other.t()], -1)
def agree(head):
    hit = n = 0
    with torch.no_grad():
        for f in H:
            hit += int((space.predict(logits(head, f)) == f[5]).sum()); n += f[5].numel()
    return hit / n
for name, head in [("linear", Head(False)), ("attn3", Head(True, nkv)), ("attn9", Head(True))]:
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=STEPS, pct_start=0.05)
    t0 = time.time()
    for i in range(STEPS):
        f = T[i % len(T)]
        loss = distill_loss(logits(head, f), f[3].float(), f[4])
        opt.zero_grad(); loss.backward(); opt.step(); sch.step()
        if i % 100 == 99: print(name, i + 1, round(loss.item(), 3), round(agree(head), 4), round(time.time() - t0), flush=True)
    print("RESULT", name, L, round(agree(head), 4), "params", sum(p.numel() for p in head.parameters()), flush=True)
