"""Tiny-random EasyOCR: a narrow CRAFT detector and a small CRNN recogniser (~1.6 MB in all).

Written in exactly the layout ``itx models pull`` gives EasyOCR's real weights (see
``workers/stages/ocr/easyocr.py``)::

    craft_mlt_25k.pth   CRAFT, every channel count / 8 (EasyOCR's CRAFT module tree, same
                        state-dict keys); the OCR backend reads the width off the checkpoint
    english_g2.pth      EasyOCR "generation2" recogniser (VGG + 2 BiLSTM + CTC head) with
                        output_channel=hidden_size=32 instead of 256, EasyOCR's English
                        character list; keys prefixed ``module.`` like EasyOCR's own file
    easyocr.json        the recogniser config (network, network_params, characters, ...)

EasyOCR's ``Reader`` would reject these files (it checks downloads' MD5 sums); the backend
loads them with ``easyocr.recognition.get_recognizer`` and its own CRAFT loader instead.

Random weights find random "text": the detector's output layer is scaled and biased so
that its score map straddles EasyOCR's thresholds, so photos yield a few boxes (and the
recogniser runs on them) while blank images yield none. The recognised strings are
meaningless.
"""
from __future__ import annotations

import json
from pathlib import Path


CRAFT_WIDTH = 1 / 8
REC_PARAMS = {"input_channel": 1, "output_channel": 32, "hidden_size": 32}
# the detector's output layer: weights x SCORE_GAIN, bias (text score, link score) =
# SCORE_BIAS; see the module docstring. Chosen so that scikit-image's photos give a few
# boxes each and blank images none.
SCORE_GAIN = 25.0
SCORE_BIAS = (0.2, -0.5)


def build_easyocr(out: Path) -> None:
    import torch
    from easyocr.model.vgg_model import Model

    from workers.stages.ocr.easyocr import DETECTOR_FILE, EASYOCR_CONFIG, craft_net, easyocr_config

    cfg = easyocr_config("en", network_params=REC_PARAMS)

    det = craft_net(CRAFT_WIDTH).eval()
    with torch.no_grad():
        det.conv_cls[-1].weight.mul_(SCORE_GAIN)
        det.conv_cls[-1].bias.copy_(torch.tensor(SCORE_BIAS))
    torch.save(det.state_dict(), out / DETECTOR_FILE)

    rec_cfg = cfg["recognizer"]
    rec = Model(num_class=len(rec_cfg["character"]) + 1, **REC_PARAMS)
    state = {f"module.{k}": v for k, v in rec.state_dict().items()}
    torch.save(state, out / rec_cfg["file"])

    (Path(out) / EASYOCR_CONFIG).write_text(json.dumps(cfg, indent=1))
