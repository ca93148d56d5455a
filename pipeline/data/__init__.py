"""The data stage: raw competition files in, canonical arrays + meta.json + split out."""
