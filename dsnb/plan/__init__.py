"""Planning: model shapes (shape), the training-memory estimate (memory, activations) and its measurement
(measure), the GPU catalogue (gpus), the fit search (fit) and the machine probe (probe); notebooks 00 and 08."""
