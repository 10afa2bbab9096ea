"""answer_question: a question about one image.

With BLIP VQA (the seed's) the model answers it. Florence-2 (the modern profile's eyes) answers no
questions: with it the tool returns what the image shows (its detailed caption) and the text written in
it (OCR), and the agent's LLM, Qwen3-4B, answers from those: it reasons better over a paragraph and the
image's words than BLIP's one-word answers do. Florence-2 is preferred when both are loaded.
"""

from core.tools.base import Tool, ToolContext, ToolResult, image_param, on_image, run_job, text_param
from core.tools.choose import first_loaded

FLORENCE, VQA = ("Florence2",), ("VisualQuestionAnswering",)


class AnswerQuestion(Tool):
    name = "answer_question"
    description = "Answer a question about an image, e.g. what breed a dog is."
    parameters = {"image": image_param("the image the question is about"),
                  "question": text_param("the question, in English")}
    any_of = (FLORENCE, VQA)
    read_only = True

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        if await first_loaded(ctx, *self.any_of) == FLORENCE:
            return await _from_florence(ctx, args)
        _, out = await on_image(ctx, "VisualQuestionAnswering", {"question": args["question"]}, "Looking at the image")
        answer = (out.text or "").strip()
        if not answer:
            return ToolResult(f"The question-answering model had no answer for {args['image']}.")
        return ToolResult(f"Answer about {args['image']}: {answer}")


async def _from_florence(ctx: ToolContext, args: dict) -> ToolResult:
    img, seen = await on_image(ctx, "Florence2", {"task": "detailed_caption"}, "Looking at the image")
    read = await run_job(ctx, "Florence2", {"task": "ocr"}, [img], label="Reading the image")
    caption, words = (seen.text or "").strip(), (read.text or "").strip()
    return ToolResult(f"What {args['image']} shows, to answer \"{args['question']}\" from: "
                      f"{caption or '(no description)'}. Text written in it: "
                      f"{repr(words) if words else '(none)'}.")
