// Reads a DICOM SEG the way OHIF's cornerstone path does (dcmjs, pinned in package.json), for tests/test_viewers.py.
//
//   node read_seg.mjs SEG CT_FOLDER LABELMAP_OUT
//
// Parses the SEG, loads it onto the CT series with dcmjs's Cornerstone segmentation adapter (generateToolState,
// cornerstoneTools 4 labelmaps) and prints JSON: the segments (label, CIELab and the sRGB a viewer paints), the
// source image the adapter put each SEG frame on, and the stack order of the labelmap written to LABELMAP_OUT
// (uint16, one Rows x Columns slice per CT image, little-endian). Exits non-zero if the adapter throws.
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

// The CommonJS build: Node 18 (Debian bookworm's nodejs) cannot import dcmjs's ES build, which is not marked as a
// module (Node >= 20.19 guesses it from its syntax).
const dcmjs = createRequire(import.meta.url)("dcmjs");

const { DicomMessage, DicomMetaDictionary, Colors } = dcmjs.data;

function readDataset(file, options = {}) {
    const bytes = fs.readFileSync(file);
    const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    const dicom = DicomMessage.readFile(buffer, options);
    return { buffer, dataset: DicomMetaDictionary.naturalizeDataset(dicom.dict) };
}

const [segPath, ctFolder, labelmapPath] = process.argv.slice(2);
if (!segPath || !ctFolder || !labelmapPath) {
    console.error("usage: node read_seg.mjs SEG CT_FOLDER LABELMAP_OUT");
    process.exit(2);
}

// The CT stack as a viewer holds it: one imageId per file, sorted along the slice normal.
const images = new Map();
for (const name of fs.readdirSync(ctFolder).sort()) {
    const { dataset } = readDataset(path.join(ctFolder, name), { untilTag: "7FE00010" });
    images.set(`dicomfile:${name}`, dataset);
}
const normal = (ds) => {
    const [a, b, c, d, e, f] = ds.ImageOrientationPatient.map(Number);
    return [b * f - c * e, c * d - a * f, a * e - b * d];
};
const depth = (ds) => normal(ds).reduce((sum, n, i) => sum + n * Number(ds.ImagePositionPatient[i]), 0);
const imageIds = [...images.keys()].sort((x, y) => depth(images.get(x)) - depth(images.get(y)));

// What cornerstone's WADO image loader answers for these modules; requests for pixel modules are recorded:
// in dcmjs 0.52.2 the planar insert asks once per SEG frame, for the image it has just mapped that frame to.
const pixelModuleRequests = [];
const metadataProvider = {
    get(type, imageId) {
        const ds = images.get(imageId);
        if (!ds) return undefined;
        const iop = ds.ImageOrientationPatient.map(Number);
        switch (type) {
            case "imagePlaneModule":
                return {
                    rowCosines: iop.slice(0, 3),
                    columnCosines: iop.slice(3),
                    imagePositionPatient: ds.ImagePositionPatient.map(Number),
                    rows: ds.Rows,
                    columns: ds.Columns,
                    frameOfReferenceUID: ds.FrameOfReferenceUID,
                };
            case "imagePixelModule":
                pixelModuleRequests.push(imageId);
                return { rows: ds.Rows, columns: ds.Columns };
            case "generalSeriesModule":
                return { seriesInstanceUID: ds.SeriesInstanceUID, modality: ds.Modality };
            case "sopCommonModule":
                return { sopInstanceUID: ds.SOPInstanceUID, sopClassUID: ds.SOPClassUID };
            case "instance":
                return ds;
            default:
                return undefined;
        }
    },
};

const warnings = [];
const warn = console.warn;
console.warn = (...args) => warnings.push(args.join(" "));
const { buffer: segBuffer, dataset: seg } = readDataset(segPath);
const { labelmapBufferArray, segMetadata, segmentsOnFrame } = dcmjs.adapters.Cornerstone.Segmentation.generateToolState(
    imageIds,
    segBuffer,
    metadataProvider,
);
console.warn = warn;

fs.writeFileSync(labelmapPath, Buffer.from(labelmapBufferArray[0]));
const sop = (imageId) => images.get(imageId).SOPInstanceUID;
const segments = segMetadata.data.slice(1).map((segment) => ({
    number: segment.SegmentNumber,
    label: segment.SegmentLabel,
    cielab: segment.RecommendedDisplayCIELabValue,
    rgb: segment.RecommendedDisplayCIELabValue ? Colors.dicomlab2RGB8(segment.RecommendedDisplayCIELabValue) : null,
}));
console.log(
    JSON.stringify({
        dcmjs: JSON.parse(fs.readFileSync(new URL("node_modules/dcmjs/package.json", import.meta.url))).version,
        number_of_frames: Number(seg.NumberOfFrames),
        labelmaps: labelmapBufferArray.length,
        segments,
        frame_sources: pixelModuleRequests.map(sop),
        stack: imageIds.map(sop),
        segments_on_frame: imageIds.map((_, index) => segmentsOnFrame[index] ?? []),
        warnings,
    }),
);
