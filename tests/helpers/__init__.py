"""What tests share that is not a test: synthetic results (``synthetic_results``), a
real result perturbed on purpose (``perturb``), the Service semantics cluster
(``semantics``) and the batch runner of CLI command lines (``cli_batch``)."""
