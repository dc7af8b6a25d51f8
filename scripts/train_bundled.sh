#!/usr/bin/env bash
# Reproduce the bundled demo weights on this machine's CPU (or a GPU), step by step, resumably.
#   bash scripts/train_bundled.sh data        # synthetic studies + detector dataset (NEG_RATIO negatives per positive,
#       default 1; HARD_FROM=DIR: half the training negatives mined with the detector in DIR)
# Detector v0.5.0 took two rounds: data, then DET_INIT=<v0.4.0>/model.pt DET_EPOCHS=12 detector (a three-window model), then
# NEG_RATIO=2.0 NEG_SEED=2 HARD_FROM=<that model> data, then DET_INIT=<that model>/model.pt DET_EPOCHS=8 detector.
#   bash scripts/train_bundled.sh more-data   # a further phantom set (MORE, MORE_SEED, default 3) converted into MORE_YOLO
#       (default data/yolo_more); the training studies of data/yolo and of the sets in MORE_SETS (default: MORE_YOLO;
#       e.g. "data/yolo_more data/yolo_more2") are combined in COMBINED (default data/yolo_combined; validation and
#       test stay data/yolo's); DET_DATA=$COMBINED/data.yaml
#   bash scripts/train_bundled.sh tiles       # the training slices of DET_DATA (default data/yolo_combined) cut into
#       native-scale 320 px tiles in TILES (default data/yolo_tiles); then DET_DATA=data/yolo_tiles/data.yaml detector
#   bash scripts/train_bundled.sh segmenter   # TransDeepLab: AdamW, bf16 where native; rerun to continue
#   bash scripts/train_bundled.sh detector    # yolov5n: AdamW, bf16 where native (a stopped run: bundle its best so far
#       with .venv/bin/python -m training.train_detector --export-only --project runs/detector --name bundled --out DIR)
#   bash scripts/train_bundled.sh polish      # a low-lr leg from DET_INIT (AdamW DET_LR, default 2e-4, to a tenth, no
#       warm-up, DET_EPOCHS default 4), every epoch kept; bundle the epoch the product sweep (evaluate --choose-guard)
#       prefers: train_detector --export-only --project runs/detector --name polish --checkpoint epochN.pt --out DIR
# The polish leg measured from v0.6.0 (models/README.md; not bundled): three phantom sets, each mined with v0.6.0
# (H=<v0.6.0 folder>): NEG_RATIO=2.0 NEG_SEED=2 HARD_FROM=$H data; HARD_FROM=$H more-data; MORE=data/synthetic_more2
# MORE_SEED=4 MORE_YOLO=data/yolo_more2 MORE_SETS="data/yolo_more data/yolo_more2" HARD_FROM=$H more-data; then
# DET_INIT=$H/model.pt polish.
# Detector v0.7.0 (bundled) is v0.6.0 polished on its own two sets with the noise augmentation: NEG_RATIO=2.0 NEG_SEED=2
# HARD_FROM=$H data; HARD_FROM=$H more-data; then DET_INIT=$H/model.pt DET_EPOCHS=3 DET_HU_NOISE=10 polish, and
# --export-only --checkpoint epoch2.pt (its last epoch), operating point 0.4 continued >= 0.1 set in its manifest.
# A wider detector from a trained one (measured, not bundled: models/README.md, "A wider detector"): yolov5n's weights
# carried function-preserving to yolov5s, then the polish step on it: .venv/bin/python -m training.transfer_detector
# --widen --model yolov5s.yaml --out data/train/s_init.pt; DET_MODEL=yolov5s.yaml DET_INIT=data/train/s_init.pt
# DET_EPOCHS=5 DET_HU_NOISE=10 polish; then on its own mined negatives (W: its exported folder): NEG_RATIO=2.0
# NEG_SEED=2 HARD_FROM=$W data; HARD_FROM=$W more-data; DET_MODEL=yolov5s.yaml DET_INIT=$W/model.pt DET_EPOCHS=5
# DET_HU_NOISE=10 polish.
#   bash scripts/train_bundled.sh evaluate    # the README table, results/evaluation.{md,json}
# Budgets (minutes/hours) and sizes come from the environment: STUDIES, SEG_MINUTES, SEG_EPOCHS, DET_HOURS, DET_EPOCHS,
# NEG_RATIO, NEG_SEED, HARD_FROM, DET_INIT, DET_MODEL (polish's architecture), DET_DATA, DET_LR, MORE, MORE_SEED,
# MORE_NEG_RATIO, MORE_YOLO, MORE_SETS, COMBINED, TILES, SEG_MORE (further phantom folders whose training studies the
# segmenter also trains on, e.g. SEG_MORE="data/synthetic_more"), SEG_NEGATIVES (a detector folder: the segmenter
# also trains on the boxes it draws on hemorrhage-free training slices, empty masks), DET_HU_SHIFT / SEG_HU_SHIFT
# (calibration-shift augmentation, HU: training.hu_shift), DET_HU_NOISE / SEG_HU_NOISE (noise augmentation, HU
# standard deviation: training.hu_shift).
# Everything is trained on synthetic phantoms: demonstration and testing only, not clinical use.
set -euo pipefail
cd "$(dirname "$0")/.."
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$PWD/.ultralytics}" YOLO_OFFLINE=1
PY=.venv/bin/python
DATA=${DATA:-data/synthetic}
WORK=${WORK:-data/train}  # checkpoints and candidate model folders (ignored by git)
mkdir -p "$WORK" logs
phantoms_and_boxes() {  # phantoms_and_boxes STUDY_DIR SEED YOLO_DIR NEG_RATIO NEG_SEED: one phantom set, converted
  $PY -m synthetic --out "$1" --studies "${STUDIES:-160}" --seed "$2" --max-slices "${MAX_SLICES:-120}" --workers 2
  $PY -m training.detector_dataset --boxes "$1/boxes.csv" --dicom-root "$1" --studies-csv "$1/studies.csv" \
      --out "$3" --negatives-per-positive "$4" --seed "$5" ${HARD_FROM:+--hard-negatives "$HARD_FROM" --hard-share 0.5}
}
case "${1:?step: data | more-data | tiles | segmenter | detector | polish | evaluate}" in
  data)
    phantoms_and_boxes "$DATA" "${SEED:-2}" data/yolo "${NEG_RATIO:-1.0}" "${NEG_SEED:-0}"
    ;;
  more-data)
    MORE=${MORE:-data/synthetic_more}
    MORE_YOLO=${MORE_YOLO:-data/yolo_more}
    phantoms_and_boxes "$MORE" "${MORE_SEED:-3}" "$MORE_YOLO" "${MORE_NEG_RATIO:-1.0}" "${MORE_SEED:-3}"
    sets=(); for set in ${MORE_SETS:-$MORE_YOLO}; do sets+=("$set/data.yaml"); done
    $PY -m training.combine_datasets data/yolo/data.yaml "${sets[@]}" --out "${COMBINED:-data/yolo_combined}"
    ;;
  tiles)
    $PY -m training.detector_tiles "${DET_DATA:-data/yolo_combined/data.yaml}" --out "${TILES:-data/yolo_tiles}" --size 320
    ;;
  segmenter)
    resume=(); [ -f "$WORK/segmenter/checkpoint.pt" ] && resume=(--resume)
    $PY -m training.train_segmenter --data "$DATA" --out "$WORK/segmenter" --mode crops --network transdeeplab \
        --optimizer adamw --init-weights "${SEG_INIT:-models/segmenter}" --epochs "${SEG_EPOCHS:-18}" \
        --steps-per-epoch 25 --val-slices 96 --max-minutes "${SEG_MINUTES:-90}" ${SEG_MORE:+--more-data $SEG_MORE} \
        ${SEG_NEGATIVES:+--negative-crops "$SEG_NEGATIVES"} ${SEG_HU_SHIFT:+--hu-shift "$SEG_HU_SHIFT"} \
        ${SEG_HU_NOISE:+--hu-noise "$SEG_HU_NOISE"} "${resume[@]}"
    ;;
  detector)
    $PY -m training.train_detector --data "${DET_DATA:-data/yolo/data.yaml}" --out "$WORK/detector" --model yolov5n.yaml \
        --pretrained "${DET_INIT:-models/detector/model.pt}" --optimizer AdamW --lr0 0.001 --batch 8 \
        --epochs "${DET_EPOCHS:-40}" ${DET_HOURS:+--time "$DET_HOURS"} --mosaic 0 --close-mosaic 0 --cache ram \
        --workers 1 --project runs/detector --name bundled --no-plots --hyp training/cpu_finetune.yaml \
        ${DET_HU_SHIFT:+--hu-shift "$DET_HU_SHIFT"} ${DET_HU_NOISE:+--hu-noise "$DET_HU_NOISE"}
    ;;
  polish)
    $PY -m training.train_detector --data "${DET_DATA:-data/yolo_combined/data.yaml}" --out "$WORK/detector_polish" \
        --model "${DET_MODEL:-yolov5n.yaml}" --pretrained "${DET_INIT:-models/detector/model.pt}" --optimizer AdamW \
        --lr0 "${DET_LR:-0.0002}" --lrf 0.1 --batch 8 --epochs "${DET_EPOCHS:-4}" --mosaic 0 --close-mosaic 0 \
        --cache ram --workers 1 --project runs/detector --name polish --no-plots --hyp training/cpu_polish.yaml \
        ${DET_HU_SHIFT:+--hu-shift "$DET_HU_SHIFT"} ${DET_HU_NOISE:+--hu-noise "$DET_HU_NOISE"}
    ;;
  evaluate)
    $PY -m evaluation.evaluate --data "$DATA" --detector "${DETECTOR:-models/detector}" \
        --segmenter "${SEGMENTER:-models/segmenter}" --out "${OUT:-results}"
    ;;
  *) echo "unknown step $1" >&2; exit 2 ;;
esac
