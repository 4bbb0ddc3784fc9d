"""jobs.distill: knowledge distillation of a smaller student from the teacher in input `model`.

The student (an MLP with `hidden` widths) learns from the teacher's temperature-softened outputs
mixed with the true labels (jobs/training.py: distillation_loss). Outputs: `model` (the student) and
`report` (report.json: parameters, size on disk and test accuracy of teacher and student).
"""

from __future__ import annotations

import json

from lhorch.jobs.cli import coerce, main
from lhorch.jobs.context import StageContext
from lhorch.jobs.data import load_dataset
from lhorch.jobs.device import set_threads, stage_resources
from lhorch.jobs.models import MODEL_FILE, build_model, count_parameters, load_model, mlp_config, model_file, save_model
from lhorch.jobs.params import DistillParams
from lhorch.jobs.training import as_tensors, distillation_loss, evaluate, fit, predict, seed_everything


def run(params: DistillParams | dict | None, ctx: StageContext) -> dict:
    p = coerce(DistillParams, params)
    set_threads(stage_resources().cpus)
    ds = load_dataset(ctx.input("dataset"))
    teacher_file = model_file(ctx.input("model"))
    teacher, payload = load_model(teacher_file)
    train, val, test = (as_tensors(*ds.split(s)) for s in ("train", "val", "test"))
    if payload["config"]["n_classes"] != ds.n_classes:
        raise ValueError(f"the teacher predicts {payload['config']['n_classes']} classes, "
                         f"the dataset has {ds.n_classes}")

    # Teacher outputs once, up front: the teacher is fixed, so recomputing them per batch is waste.
    teacher_logits = predict(teacher, train[0])
    seed_everything(p.seed)
    config = mlp_config(ds.n_features, p.hidden, ds.n_classes)
    student = build_model(config)
    history = fit(student, train, val, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay,
                  seed=p.seed, loss_fn=distillation_loss(teacher_logits, p.temperature, p.alpha))

    out = ctx.output("model")
    student_file = save_model(out / MODEL_FILE, student, config, task="distill", teacher=str(teacher_file),
                              class_names=ds.meta.get("class_names"), dataset_sha=ds.meta.get("sha256"))
    t_acc, s_acc = evaluate(teacher, *test)["acc"], evaluate(student, *test)["acc"]
    report = {
        "teacher": {"parameters": count_parameters(teacher), "bytes": teacher_file.stat().st_size, "test_acc": t_acc,
                    "hidden": payload["config"]["hidden"]},
        "student": {"parameters": count_parameters(student), "bytes": student_file.stat().st_size, "test_acc": s_acc,
                    "hidden": p.hidden},
        "accuracy_kept": s_acc / t_acc if t_acc else None,
        "temperature": p.temperature, "alpha": p.alpha, "history": history,
    }
    report["compression"] = report["teacher"]["parameters"] / report["student"]["parameters"]
    (ctx.output("report") / "report.json").write_text(json.dumps(report, indent=2))
    return {k: v for k, v in report.items() if k != "history"}


if __name__ == "__main__":
    main(DistillParams, run, "jobs.distill", __doc__)
