"""Run one checkpoint under three layer schedules with the depth path.

    python examples/schedules.py [MODEL]      (MODEL: an alias or a checkpoint; default smollm2-135m)
"""

import sys

from vllm import LLM, SamplingParams

from vllm_depth.tools.checkpoints import resolve_model

SCHEDULES = {
    "identity": None,
    "pruned (drop 12-17)": [i for i in range(30) if not 12 <= i < 18],
    "layer 29 repeated": list(range(30)) + [29],
}

if __name__ == "__main__":  # vLLM starts its engine in a child process
    model = resolve_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m")
    prompt = "def fibonacci(n):"
    for name, schedule in SCHEDULES.items():
        depth = {} if schedule is None else {"layer_schedule": schedule}
        llm = LLM(model=model, model_impl="depth", hf_overrides={"depth": depth},
                  dtype="float32", gpu_memory_utilization=0.3, max_model_len=1024)
        out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=32))
        print(f"--- {name}\n{prompt}{out[0].outputs[0].text}\n")
        del llm
