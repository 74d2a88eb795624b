"""Running a teacher LLM: one base (:class:`lrkd.teacher.runtime.base.TeacherRuntime`) over a local
Hugging Face model (:mod:`~lrkd.teacher.runtime.hf`), an OpenAI-compatible HTTP server
(:mod:`~lrkd.teacher.runtime.http`) and a GGUF file on llama.cpp (:mod:`~lrkd.teacher.runtime.llama_cpp`)."""
