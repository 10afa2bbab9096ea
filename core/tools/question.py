"""answer_question: visual question answering about one image (BLIP VQA)."""

from core.tools.base import Tool, ToolContext, ToolResult, image_param, on_image, text_param


class AnswerQuestion(Tool):
    name = "answer_question"
    description = "Answer a question about what an image shows, e.g. what breed a dog is."
    parameters = {"image": image_param("the image the question is about"),
                  "question": text_param("the question, in English")}
    models = ("VisualQuestionAnswering",)
    read_only = True

    async def run(self, ctx: ToolContext, args: dict) -> ToolResult:
        _, out = await on_image(ctx, "VisualQuestionAnswering", {"question": args["question"]}, "Looking at the image")
        answer = (out.text or "").strip()
        if not answer:
            return ToolResult(f"The question-answering model had no answer for {args['image']}.")
        return ToolResult(f"Answer about {args['image']}: {answer}")
