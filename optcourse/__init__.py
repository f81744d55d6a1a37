"""optcourse: the course library that the lectures, labs, autograder and quiz import.

Subpackages, by what the code does:
    core        paths and the offline environment, the hardware profile, notebook set-up
    measure     timing (bench), metrics, thresholds, reports, profiling and roofline, benchmark scenarios
    techniques  ONNX export, ONNX Runtime graphs, calibration, quantization, engines, compression,
                decoding, the KV cache and batching
    serving     the vLLM server and the load generator
    models      the offline model zoo: digits ResNet, all-MiniLM-L6-v2, the course's small Llama
    course      lab release, grading one notebook, notebook validation, the papermill runner
    autograde   the class-scale autograder
    quiz        the quiz bank, generation, grading and LMS exports
Importing the package changes nothing in the environment; entry points call
``optcourse.core.paths.apply_offline_environment()``.
"""

__version__ = "0.1.0"
