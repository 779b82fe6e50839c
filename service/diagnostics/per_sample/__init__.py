"""Per-sample gradient statistics of a run (`"per_sample": true`): each sample's gradient norm,
the gradient noise, the samples' alignment with the batch gradient and each parameter's GSNR,
at about the cost of one more backward pass where the layers' identities apply.

- `admission`: refusals and costs at plan time;
- `recorder`: what the batch pass records (inputs, output gradients, dropout masks);
- `identities`: per-sample sums from those records, layer type by layer type;
- `vmap`: torch.func for the parameters no identity covers;
- `gradients`: which path computes which parameter;
- `statistics`, `findings`: the report's numbers and words;
- `report`: the part of a run that run.py calls.
"""
