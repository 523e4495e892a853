import torch, io, time, traceback
print(torch.__version__)
import torchao; print("torchao", torchao.__version__)
import torchao.optim as ao
print([n for n in dir(ao) if not n.startswith("_")])
from torchao.optim.subclass_8bit import OptimState8bit
from torchao.optim.subclass_4bit import OptimState4bit
torch.manual_seed(0)
x = torch.randn(4096, 256) * 1e-3
for cls, signed in [(OptimState8bit, True), (OptimState8bit, False), (OptimState4bit, True), (OptimState4bit, False)]:
    try:
        s = cls.zeros(x.shape, signed=signed, block_size=256, device="cpu")
        src = x if signed else x.square()
        s.copy_(src)
        d = s.dequantize()
        err = ((d - src).abs().max() / src.abs().max()).item()
        inner = {n: getattr(s, n) for n in s.__tensor_flatten__()[0]}
        nbytes = {n: t.untyped_storage().nbytes() for n, t in inner.items()}
        print(cls.__name__, "signed", signed, "maxerr/absmax", err, "inner", {n: (t.dtype, tuple(t.shape)) for n,t in inner.items()}, nbytes,
              "outer storage nbytes:", end=" ")
        try: print(s.untyped_storage().nbytes())
        except Exception as e: print("ERR", type(e).__name__, str(e)[:100])
        # save / load
        buf = io.BytesIO(); torch.save({"m": s}, buf); buf.seek(0)
        try:
            l = torch.load(buf, weights_only=True)["m"]; print("  weights_only load OK", type(l).__name__)
        except Exception as e:
            print("  weights_only load FAIL:", str(e).splitlines()[0][:200])
            buf.seek(0)
            torch.serialization.add_safe_globals([cls])
            try:
                l = torch.load(buf, weights_only=True)["m"]; print("  with add_safe_globals OK", type(l).__name__)
            except Exception as e:
                print("  with add_safe_globals FAIL:", str(e).splitlines()[0][:300])
                l=None
        if l is not None:
            print("  exact:", all(torch.equal(getattr(l, n), t) for n, t in inner.items()))
        # ops
        for name, f in [("lerp_", lambda t: t.lerp_(torch.ones_like(src), 0.1)), ("mul_", lambda t: t.mul_(0.9)),
                        ("addcmul_", lambda t: t.addcmul_(src, src, value=0.1)), ("plain add", lambda t: t + 1), ("sqrt", lambda t: t.sqrt())]:
            try:
                r = f(s); print("  ", name, "ok ->", type(r).__name__)
            except Exception as e:
                print("  ", name, "FAIL", type(e).__name__, str(e).splitlines()[0][:150])
        try:
            m = cls.zeros(x.shape, signed=signed, block_size=256, device="meta"); print("  meta OK", type(m).__name__)
        except Exception as e:
            print("  meta FAIL", type(e).__name__, str(e).splitlines()[0][:150])
    except Exception:
        traceback.print_exc()
import time, io
t=time.time()
import torch
t1=time.time()
from torchao.optim.subclass_8bit import OptimState8bit
print("import torchao.optim.subclass_8bit s:", round(time.time()-t1,2))
s = OptimState8bit.zeros((512, 256), signed=True, block_size=256)
s.copy_(torch.randn(512,256))
for name, f in [("to bf16", lambda: s.to(torch.bfloat16)), ("to cpu same", lambda: s.to("cpu")), ("clone", lambda: s.clone()),
                ("deepcopy", lambda: __import__("copy").deepcopy(s)), ("isfloat", lambda: torch.is_floating_point(s)),
                ("dequantize dtype", lambda: s.dequantize().dtype), ("element_size", lambda: s.element_size()),
                ("nbytes", lambda: s.nbytes)]:
    try: print(name, "->", (lambda r: r if not isinstance(r, torch.Tensor) else type(r).__name__ + str(r.dtype))(f()))
    except Exception as e: print(name, "FAIL", type(e).__name__, str(e).splitlines()[0][:150])
# optimizer load_state_dict with bf16 param
p = torch.nn.Parameter(torch.zeros(512, 256, dtype=torch.bfloat16))
opt = torch.optim.SGD([p], lr=0.1)
opt.state[p]["m"] = s
sd = opt.state_dict()
buf = io.BytesIO(); torch.save(sd, buf); buf.seek(0)
sd2 = torch.load(buf, weights_only=True)
opt2 = torch.optim.SGD([p], lr=0.1)
try:
    opt2.load_state_dict(sd2); m = opt2.state[p]["m"]; print("load_state_dict bf16 param ->", type(m).__name__, m.dtype)
except Exception as e: print("load_state_dict FAIL", type(e).__name__, str(e).splitlines()[0][:200])
# compile-free in-place copy_ throughput
x = torch.randn(4096, 4096)
s = OptimState8bit.zeros(x.shape, signed=True, block_size=256)
t=time.time(); s.copy_(x); print("copy_ 16M s", round(time.time()-t,3))
t=time.time(); y=s.dequantize(); print("dequantize 16M s", round(time.time()-t,3))
